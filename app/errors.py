"""Every error leaves every process as RFC 9457 problem+json, in one place.

Domain errors, HTTP errors (including webargs' 400/422 from flask-smorest) and
unexpected exceptions are mapped here; nothing internal reaches a client.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, json, request
from marshmallow import INCLUDE, Schema, fields, validate
from werkzeug.exceptions import HTTPException, InternalServerError

from infra import errors as domain

# The HTTP status of each kind of domain error; the most specific kind wins.
STATUS = {
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.ValidationFailed: 422,
    domain.Unauthorized: 401,
    domain.Forbidden: 403,
    domain.Throttled: 429,
    domain.Unavailable: 503,
    domain.DomainError: 400,
}

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemSchema(Schema):
    """What ``problem_document`` writes, for the OpenAPI documents (never used to load or dump)."""

    class Meta:
        unknown = INCLUDE  # RFC 9457 extension members

    type = fields.String(required=True, metadata={
        "format": "uri-reference", "example": "/problems/validation-error",
        "description": "about:blank, or /problems/<slug> for the domain's own errors"})
    title = fields.String(required=True, metadata={"example": "Validation failed"})
    status = fields.Integer(required=True, validate=validate.Range(min=400, max=599))
    detail = fields.String(required=True, metadata={"example": "the request body failed validation"})
    errors = fields.Dict(
        keys=fields.String(), values=fields.List(fields.String()),
        metadata={"description": "Validation failures: field (dotted path) -> messages",
                  "example": {"items.0.quantity": ["Must be greater than or equal to 1 and less than or equal to 1000."]}},
    )


def problem_document(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    errors: dict[str, list[str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The RFC 9457 body; also what the gunicorn worker writes for refusals no app sees."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    return body


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
    body = problem_document(status, detail, title=title, type_=type_, errors=errors, **extra)
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
    if status == 413:
        # The rest of the body stays unread: the server closes the connection, and says so.
        headers = {**headers, "Connection": "close"}
    return problem(status, detail, errors=errors, headers=headers)


def status_of(error: domain.DomainError) -> int:
    return next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)


def handle_domain_error(error: domain.DomainError) -> Response:
    headers = {}
    if isinstance(error, domain.Unavailable):
        headers["Retry-After"] = str(error.retry_after)
    return problem(
        status_of(error),
        error.detail,
        title=error.title,
        type_=f"/problems/{error.slug}",
        errors=error.errors,
        headers=headers,
    )


def _malformed_body(error: BaseException) -> bool:
    """gunicorn raises its parse errors (a bad chunk size, say) from the body stream the app reads."""
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:  # another WSGI server
        return False
    return isinstance(error, ParseException)


def handle_unexpected(error: BaseException) -> Response:
    original = getattr(error, "original_exception", None) or error
    if isinstance(original, domain.DomainError):
        return handle_domain_error(original)
    if _malformed_body(original):
        return problem(400, "the request body is not valid HTTP/1.1 framing", headers={"Connection": "close"})
    logger.error(
        "unhandled error on %s %s", request.method, request.path, exc_info=original
    )
    return problem(500, "an unexpected error occurred; it has been logged", type_="about:blank")


def register(app: Flask) -> None:
    app.register_error_handler(domain.DomainError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(InternalServerError, handle_unexpected)
    app.register_error_handler(Exception, handle_unexpected)
