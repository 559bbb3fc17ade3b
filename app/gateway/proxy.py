"""Forwarding requests to upstream services over pooled HTTP connections.

urllib3's PoolManager is thread-safe and keeps connections alive per upstream;
connection failures are retried once for any method (nothing was sent), read
failures only for idempotent methods. Down -> 503, timeout -> 504 problem.
"""
from __future__ import annotations

import logging

import urllib3
from flask import Flask, Response, g, request
from flask_jwt_extended import verify_jwt_in_request
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ConnectTimeoutError,
)

from app.errors import problem
from app.gateway.routes import resolve
from config.settings import Settings
from services.errors import Unavailable

logger = logging.getLogger(__name__)

# Request headers passed upstream; everything else (hop-by-hop, Host, cookies) stays here.
FORWARD_REQUEST = (
    "Authorization", "Content-Type", "Accept", "Idempotency-Key", "traceparent", "tracestate",
    "User-Agent",
)
DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class Upstreams:
    """Where each service is. A registry-backed lookup replaces ``url_for`` later."""

    def __init__(self, settings: Settings):
        self.urls = dict(settings.service_urls)
        self.http = urllib3.PoolManager(
            num_pools=16,
            maxsize=32,
            timeout=urllib3.Timeout(
                connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout
            ),
            retries=urllib3.Retry(
                total=1, connect=1, read=1, status=0, other=0, allowed_methods=IDEMPOTENT,
                raise_on_status=False, raise_on_redirect=False, redirect=0,
            ),
        )

    def url_for(self, service: str) -> str:
        return self.urls[service]

    def health(self, service: str) -> None:
        try:
            response = self.http.request(
                "GET", self.url_for(service) + "/health", timeout=urllib3.Timeout(total=1.0), retries=False
            )
        except urllib3.exceptions.HTTPError:
            raise Unavailable(f"{service} is unreachable") from None
        if response.status != 200:
            raise Unavailable(f"{service} answered {response.status}")


def init_app(app: Flask, settings: Settings, ready_checks: dict) -> None:
    upstreams = Upstreams(settings)
    app.extensions["upstreams"] = upstreams
    for service in settings.gateway_services:
        ready_checks[f"upstream:{service}"] = lambda s=service: upstreams.health(s)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.route("/api/<path:subpath>", methods=methods)
    def forward(subpath: str):
        path = request.path
        route = resolve(path)
        if route is None:
            return problem(404, "no such resource")
        if not route.is_public(request.method, path):
            verify_jwt_in_request()
        return _forward(upstreams, route.service, path)


def _forward(upstreams: Upstreams, service: str, path: str) -> Response:
    url = upstreams.url_for(service) + path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    headers = {name: request.headers[name] for name in FORWARD_REQUEST if name in request.headers}
    headers["X-Request-ID"] = g.request_id
    forwarded_for = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{forwarded_for}, {request.remote_addr}" if forwarded_for else (
        request.remote_addr or ""
    )
    body = request.get_data(cache=False) if request.method not in ("GET", "HEAD") else None
    try:
        upstream = upstreams.http.request(
            request.method, url, body=body, headers=headers, preload_content=True
        )
    except MaxRetryError as exc:
        return _failure(service, exc.reason)
    except (ReadTimeoutError, ConnectTimeoutError, NewConnectionError, ProtocolError) as exc:
        return _failure(service, exc)
    response = Response(
        upstream.data, status=upstream.status, content_type=upstream.headers.get("Content-Type")
    )
    for name, value in upstream.headers.items():
        if name.lower() not in DROP_RESPONSE | {"content-type", "x-request-id"}:
            response.headers.add(name, value)
    return response


def _failure(service: str, reason: BaseException | None) -> Response:
    if isinstance(reason, ReadTimeoutError):
        logger.warning("upstream timed out", extra={"upstream": service})
        return problem(504, f"the {service} service did not answer in time")
    logger.warning("upstream unavailable", extra={"upstream": service, "error": type(reason).__name__})
    return problem(
        503, f"the {service} service is unavailable, retry later", headers={"Retry-After": "1"}
    )
