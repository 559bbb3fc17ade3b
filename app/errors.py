"""Every error leaves every process as RFC 9457 problem+json, in one place.

Domain errors, HTTP errors (including webargs' 400/422 from flask-smorest) and
unexpected exceptions are mapped here; nothing internal reaches a client.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException, InternalServerError

from services.errors import DomainError, Unavailable

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    from http import HTTPStatus

    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """webargs/marshmallow nested messages -> {"items.0.quantity": ["..."]}."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (dict, list)) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                out.update(flatten_messages(value, name))
            else:
                out[name] = list(value) if isinstance(value, list) else [str(value)]
    elif isinstance(messages, list):
        out[prefix or "_schema"] = [str(m) for m in messages]
    return out


def _validation_errors(error: HTTPException) -> dict[str, list[str]] | None:
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    if not messages:
        return None
    # webargs nests by location ("json", "query", ...); clients know fields, not locations.
    merged: dict[str, Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            merged.update(fields)
        else:
            merged[location if location != "json" else "body"] = fields
    errors = flatten_messages(merged)
    # marshmallow files errors about a whole object under "_schema": name the object instead.
    return {
        ("body" if k == "_schema" else k.removesuffix("._schema")): v for k, v in errors.items()
    }


_DETAILS = {
    400: "the request body is not valid JSON",
    404: "no such resource",
    405: "method not allowed on this resource",
    413: "the request body is larger than 1 MiB",
    415: "the request body must be application/json",
    422: "the request body failed validation",
    429: "too many requests; retry after the number of seconds in Retry-After",
}


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    if status >= 500:
        return handle_unexpected(error)
    errors = _validation_errors(error)
    detail = _DETAILS.get(status) or error.description or "request refused"
    if status == 400 and not errors:
        detail = error.description if error.description else detail
    headers = dict(getattr(error, "data", {}) or {}).get("headers") or {}
    if status == 405 and error.valid_methods:
        headers = {**headers, "Allow": ", ".join(error.valid_methods)}
    if status == 400 and errors and "body" in errors:
        detail, errors = _DETAILS[400], None
    return problem(status, detail, errors=errors, headers=headers)


def handle_domain_error(error: DomainError) -> Response:
    headers = {}
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after)
    return problem(
        error.status,
        error.detail,
        title=error.title,
        type_=f"/problems/{error.slug}",
        errors=error.errors,
        headers=headers,
    )


def handle_unexpected(error: BaseException) -> Response:
    original = getattr(error, "original_exception", None) or error
    if isinstance(original, DomainError):
        return handle_domain_error(original)
    logger.error(
        "unhandled error on %s %s", request.method, request.path, exc_info=original
    )
    return problem(500, "an unexpected error occurred; it has been logged", type_="about:blank")


def register(app: Flask) -> None:
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(InternalServerError, handle_unexpected)
    app.register_error_handler(Exception, handle_unexpected)
