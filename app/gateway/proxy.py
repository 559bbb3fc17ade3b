"""The gateway's routes: authenticate, rate-limit and forward /api/... to the services, and
everything outside /api and the operations paths to the web console.

Down -> 503, timeout -> 504, open circuit or a full bulkhead -> 503 with Retry-After, all
problem+json.
"""
from __future__ import annotations

import logging
from urllib.parse import quote

import pybreaker
from flask import Flask, Response, g, request
from flask_jwt_extended import verify_jwt_in_request
from werkzeug.exceptions import MethodNotAllowed

from app import forwarded
from app.errors import problem
from app.gateway import limits, views
from app.gateway.routes import is_api, resolve, resolve_own
from app.gateway.upstreams import UpstreamBusy, UpstreamDown, Upstreams
from config.settings import Settings

logger = logging.getLogger(__name__)

# Request headers passed upstream; everything else (hop-by-hop, Host, cookies) stays here.
FORWARD_REQUEST = (
    "Authorization", "Content-Type", "Accept", "Idempotency-Key", "traceparent", "tracestate", "User-Agent",
)
DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date",
                 "content-type", "x-request-id"}
# What a browser's request to the web console (everything outside /api) takes along: its
# cookies (the console's session and tokens), form bodies, htmx's headers, the CSRF header.
FORWARD_WEB_REQUEST = (
    "Cookie", "Content-Type", "Accept", "Accept-Language", "User-Agent", "traceparent", "tracestate",
    "If-None-Match", "If-Modified-Since", "X-CSRFToken", "HX-Request", "HX-Boosted", "HX-Current-URL",
    "HX-History-Restore-Request", "HX-Target", "HX-Trigger", "HX-Trigger-Name",
)
WEB_METHODS = ["GET", "HEAD", "POST"]


def init_app(app: Flask, settings: Settings, ready_checks: dict) -> None:
    upstreams = Upstreams(settings)
    app.extensions["upstreams"] = upstreams
    for service in settings.gateway_services:
        ready_checks[f"upstream:{service}"] = lambda s=service: upstreams.health(s)
    # Before the limiter's hook: a method the path does not have is answered like the
    # service would answer it, whoever asks and however often.
    app.before_request(_answer_methods)
    limiter = limits.init_app(app, settings)
    views.init_app(app, upstreams)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.route("/api/<path:subpath>", methods=methods)
    def forward(subpath: str):
        return _route(upstreams)

    # Login has a limit of its own on top of the default one; a route of its own keeps
    # flask-limiter from evaluating (and exempting) that limit on every other request.
    @app.route("/api/auth/login", methods=methods)
    @limiter.limit(settings.rate_limit_login, key_func=limits.login_key, override_defaults=False)
    def login():
        return _route(upstreams)

    # Everything else is the web console's (app/web), static files included: the ops paths
    # (/health, /ready, /metrics) and /api/... are rules of their own, matched before this one.
    # Pages are limited per client (the client's address, app/forwarded.py), a bucket of their
    # own; static files are not counted: a page view fetches several.
    @app.route("/", defaults={"subpath": ""}, methods=WEB_METHODS)
    @app.route("/<path:subpath>", methods=WEB_METHODS)
    @limiter.limit(settings.rate_limit_pages, key_func=limits.page_key, exempt_when=limits.is_static)
    def web(subpath: str):
        if is_api(request.path):
            return problem(404, "no such resource")
        return _forward(upstreams, "web", quote(request.path, safe=_PATH_SAFE), forward=FORWARD_WEB_REQUEST)


def _answer_methods() -> Response | None:
    """405 with Allow for a method the path does not have; OPTIONS answered here, like Flask does."""
    route = resolve(request.path) or resolve_own(request.path)
    allowed = route.allowed_methods(request.path) if route is not None else set()
    if not allowed:
        return None  # not a forwarded operation: the gateway's own routes, or the service decides
    if request.method == "OPTIONS":
        return Response(status=200, headers={"Allow": ", ".join(sorted(allowed))})
    if request.method not in allowed:
        raise MethodNotAllowed(valid_methods=sorted(allowed))  # app/errors.py: 405 problem with Allow
    return None


def _route(upstreams: Upstreams) -> Response:
    # request.path is the one spelling app/guard.py let through, decoded: it is what
    # chooses the route and what goes upstream (encoded again, the same way every time).
    path = request.path
    route = resolve(path)
    if route is None:
        return problem(404, "no such resource")
    if not route.is_public(request.method, path):
        verify_jwt_in_request()
    return _forward(upstreams, route.service, quote(path, safe=_PATH_SAFE))


# RFC 3986 pchar and "/", less "%": whatever was percent-encoded is encoded again.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


def _forward(upstreams: Upstreams, service: str, path: str, *, forward: tuple = FORWARD_REQUEST) -> Response:
    if request.query_string:
        path += "?" + request.query_string.decode("latin-1")
    headers = {name: request.headers[name] for name in forward if name in request.headers}
    headers["X-Request-ID"] = g.request_id
    forwarded_for, peer = request.headers.get("X-Forwarded-For"), forwarded.peer(request.environ)
    headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
    body = request.get_data(cache=False) if request.method not in ("GET", "HEAD") else None
    try:
        upstream = upstreams.request(service, request.method, path, body=body, headers=headers)
    except pybreaker.CircuitBreakerError:
        return problem(503, f"the {service} service is unavailable, retry later",
                       headers={"Retry-After": str(upstreams.retry_after(service))})
    except UpstreamBusy:
        logger.warning("upstream busy", extra={"upstream": service})
        return problem(503, f"the {service} service is busy, retry shortly", headers={"Retry-After": "1"})
    except UpstreamDown as exc:
        if str(exc) == "timeout":
            logger.warning("upstream timed out", extra={"upstream": service})
            return problem(504, f"the {service} service did not answer in time")
        return problem(503, f"the {service} service is unavailable, retry later", headers={"Retry-After": "1"})
    response = Response(upstream.data, status=upstream.status, content_type=upstream.headers.get("Content-Type"))
    for name, value in upstream.headers.items():
        if name.lower() not in DROP_RESPONSE:
            response.headers.add(name, value)
    return response
