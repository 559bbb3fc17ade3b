"""flask-smorest's Api and Blueprint as every process uses them.

The Blueprint's JSON parser never lets bad input become a 500. The OpenAPI document
says what the server does: errors are ``application/problem+json`` (``ProblemSchema``),
every operation lists the error statuses it can answer, authenticated operations
name the bearer scheme, and the constraints of ``infra/validation.py`` (text
without control characters, anchored patterns, "not 0") are stated in the schemas.
"""
from __future__ import annotations

import http
from copy import deepcopy
from functools import wraps

import flask_smorest
from flask import current_app
from flask.views import MethodView
from marshmallow import validate
from webargs.flaskparser import FlaskParser

from app.errors import PROBLEM_JSON, ProblemSchema
from infra.validation import Email

BEARER_AUTH = "bearerAuth"
BEARER_SCHEME = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                 "description": "An access token from POST /api/users or POST /api/auth/login "
                                "(POST /api/auth/refresh takes the refresh token instead)."}

_TEXT = {"schema": {"type": "string"}}
_SECONDS = {"schema": {"type": "integer", "minimum": 0}}
# Headers an error response carries; required ones are always there.
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {**_TEXT, "required": True, "description": "Bearer"}},
    405: {"Allow": {**_TEXT, "required": True, "description": "The methods the path has"}},
    429: {"Retry-After": {**_SECONDS, "required": True, "description": "Seconds to wait"},
          "RateLimit-Limit": {**_SECONDS, "description": "The limit (at the gateway)"},
          "RateLimit-Remaining": {**_SECONDS, "description": "What is left of it (at the gateway)"},
          "RateLimit-Reset": {**_SECONDS, "description": "Seconds until it resets (at the gateway)"}},
    503: {"Retry-After": {**_SECONDS, "description": "Seconds to wait before retrying"}},
}
ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, or a path not in its one spelling (dot segments, encoded dots or slashes, "
         "empty segments)",
    401: "Missing, malformed, expired, revoked or wrongly signed token",
    403: "Authenticated, but the action needs the admin role",
    404: "No such resource, or an id that is not a UUID",
    409: "Conflicts with the current state",
    413: "The body is over 1 MiB (the connection is closed)",
    415: "The body is not application/json",
    422: "The request failed validation (``errors`` says where)",
    429: "Too many requests; retry after Retry-After seconds",
    503: "A dependency is unavailable; retry later",
    504: "An upstream service did not answer in time",
}
BODY_METHODS = ("post", "put", "patch")


def problem_response(status: int) -> dict:
    """The OpenAPI response object of an error with this status (OpenAPI 3)."""
    response = {
        "description": ERROR_DESCRIPTIONS.get(status) or http.HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": ProblemSchema}},
    }
    if status in ERROR_HEADERS:
        response["headers"] = deepcopy(ERROR_HEADERS[status])
    return response


def _text_pattern(self, field, ret, **kwargs) -> dict:
    """Text and Line refuse control characters: say so, unless a pattern says more already."""
    pattern = getattr(field, "json_pattern", None)
    return {"pattern": pattern} if pattern and "pattern" not in ret else {}


def _none_of(self, field, ret, **kwargs) -> dict:
    """``validate.NoneOf`` (``delta`` must not be 0) as ``not: {enum: [...]}``."""
    excluded = [value for validator in field.validators if isinstance(validator, validate.NoneOf)
                for value in validator.iterable]
    return {"not": {"enum": excluded}} if excluded else {}


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema

    def _init_spec(self, **kwargs):
        super()._init_spec(**kwargs)
        self.spec.components.security_scheme(BEARER_AUTH, BEARER_SCHEME)
        self.register_field(Email, "string", "email")
        self.ma_plugin.converter.add_attribute_function(_text_pattern)
        self.ma_plugin.converter.add_attribute_function(_none_of)

    def _register_responses(self):
        """Error responses as problem+json (flask-smorest documents its own JSON error format)."""
        for status in http.HTTPStatus:
            if status >= 400:
                self.spec.components.response(status.name, problem_response(status), lazy=True)
        default = {**problem_response(500), "description": "Any other error (problem+json)"}
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, default, lazy=True)


class Parser(FlaskParser):
    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except (ValueError, RecursionError) as exc:
            # webargs handles JSONDecodeError only; json.loads also raises a plain
            # ValueError (an integer over 4300 digits) and RecursionError (deep nesting).
            self._handle_invalid_json_error(exc, req)


def _document(obj, **info):
    """Store doc info on a view function, or on each method of a MethodView, like flask-smorest's decorators."""

    def decorate(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            return current_app.ensure_sync(func)(*args, **kwargs)

        wrapper._apidoc = deepcopy(getattr(wrapper, "_apidoc", {}))
        problems = wrapper._apidoc.setdefault("problems", {"statuses": [], "security": None})
        problems["statuses"] = sorted({*problems["statuses"], *info.get("statuses", ())})
        if info.get("security") is not None:
            problems["security"] = info["security"]
        return wrapper

    if isinstance(obj, type) and issubclass(obj, MethodView):
        for method in obj.methods or ():
            setattr(obj, method.lower(), decorate(getattr(obj, method.lower())))
        return obj
    return decorate(obj)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_problems_doc)

    @staticmethod
    def problems(*statuses: int):
        """Document error statuses a view answers besides those every operation can give."""
        return lambda obj: _document(obj, statuses=statuses)

    @staticmethod
    def bearer(*, admin: bool = False):
        """Document that a view (or every method of a MethodView) needs a Bearer token: 401, and 403 for admin."""
        return lambda obj: _document(obj, statuses=(401, 403) if admin else (401,),
                                     security=[{BEARER_AUTH: []}])

    @staticmethod
    def _prepare_problems_doc(doc, doc_info, *, method, **kwargs):
        """Every operation: 400 and 503; with a body method also 413 and 415; then the view's own."""
        info = doc_info.get("problems", {})
        statuses = {400, 503, *info.get("statuses", ())}
        if method in BODY_METHODS:
            statuses |= {413, 415}
        responses = doc.setdefault("responses", {})
        present = {str(code) for code in responses}
        for status in statuses:
            if str(status) not in present:
                responses[status] = http.HTTPStatus(status).name
        doc["responses"] = dict(sorted(responses.items(), key=lambda kv: (str(kv[0]) == "default", str(kv[0]))))
        if info.get("security"):
            doc["security"] = info["security"]
        return doc
