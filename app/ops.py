"""What every HTTP process has: request ids, access log, metrics, /health, /ready, /metrics."""
from __future__ import annotations

import logging
import time
import uuid
from typing import Callable

import structlog
from flask import Blueprint, Flask, Response, g, jsonify, request

from app import metrics
from app.errors import problem
from services import runtime
from services.errors import Unavailable

logger = logging.getLogger("app.access")

REQUEST_ID = "X-Request-ID"
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _request_id() -> str:
    incoming = request.headers.get(REQUEST_ID, "")
    # Echo a sane client id; replace anything that could poison logs or headers.
    if 0 < len(incoming) <= 128 and incoming.isprintable() and " " not in incoming:
        return incoming
    return uuid.uuid4().hex


def check_database() -> None:
    async def ping(db):
        return await db.fetch_value("SELECT 1")

    runtime.db().run(ping, runtime.db().manager("public"), timeout=1.0)


def check_redis() -> None:
    import redis

    try:
        runtime.get().redis.ping()
    except redis.RedisError:
        raise Unavailable("redis is unavailable") from None


def register(app: Flask, *, service: str, ready_checks: dict[str, Callable[[], None]]) -> None:
    @app.before_request
    def _start():
        g.started = time.perf_counter()
        g.request_id = _request_id()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        if (
            request.method in _BODY_METHODS
            and (request.content_length or request.headers.get("Transfer-Encoding"))
            and not request.is_json
        ):
            return problem(415, "the request body must be application/json")

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID] = g.get("request_id") or _request_id()
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        if route not in ("/metrics", "/health"):
            metrics.REQUESTS.labels(service, request.method, route, response.status_code).inc()
            metrics.LATENCY.labels(service, request.method, route).observe(elapsed)
            metrics.observe_pool(service)
        logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                "remote_addr": request.remote_addr,
            },
        )
        return response

    ops = Blueprint("ops", __name__)

    @ops.get("/health")
    def health():
        return jsonify(status="ok", service=service)

    @ops.get("/ready")
    def ready():
        checks, failed = {}, []
        for name, check in ready_checks.items():
            try:
                check()
                checks[name] = "ok"
            except Unavailable as exc:
                checks[name] = exc.detail
                failed.append(name)
        if failed:
            return problem(
                503, "not ready: " + ", ".join(failed) + " unavailable", checks=checks, failed=failed
            )
        return jsonify(status="ready", checks=checks)

    @ops.get("/metrics")
    def prometheus():
        body, content_type = metrics.render(service)
        return Response(body, content_type=content_type)

    app.register_blueprint(ops)
