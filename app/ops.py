"""What every HTTP process has: request ids, access log, metrics, /health, /ready, /metrics.

/health is open to everyone. /ready and /metrics answer only clients in
OPS_ALLOWED_NETWORKS (a 404 like any unknown path to others): the client is the
client's address as app/forwarded.py finds it (the socket peer, or behind TRUSTED_PROXIES
the nearest address in X-Forwarded-For that is not one of them). Readiness is checked at most once per READY_CACHE_SECONDS
per process, however many ask.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from functools import wraps
from typing import Callable

import structlog
from flask import Blueprint, Flask, Response, abort, g, jsonify, request

from app import forwarded

from app import metrics
from app.errors import problem
from infra import runtime
from infra.errors import Unavailable

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


def internal_only(view, *, allowed: tuple):
    """Serve ``view`` to clients in ``allowed`` networks; to anyone else the path does not exist."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        address = forwarded.ip(request.remote_addr)  # the client's, as app/forwarded.py found it
        if address is None or not any(address in net for net in allowed):
            abort(404)
        return view(*args, **kwargs)

    return wrapper


class Readiness:
    """The readiness checks, run at most once per ``ttl`` seconds; concurrent askers share one run."""

    def __init__(self, checks: dict[str, Callable[[], None]], *, ttl: float):
        self.checks = checks
        self.ttl = ttl
        self._lock = threading.Lock()
        self._result: tuple[dict, list] | None = None
        self._at = 0.0

    def result(self) -> tuple[dict, list]:
        """({check: "ok" or what failed}, [failed check names])."""
        cached = self._fresh()
        if cached is not None:
            return cached
        with self._lock:
            cached = self._fresh()  # another thread ran them while this one waited
            if cached is not None:
                return cached
            result = self._run()
            self._result, self._at = result, time.monotonic()
            return result

    def _fresh(self):
        result = self._result
        return result if result is not None and time.monotonic() - self._at < self.ttl else None

    def _run(self) -> tuple[dict, list]:
        checks, failed = {}, []
        for name, check in list(self.checks.items()):
            try:
                check()
                checks[name] = "ok"
            except Unavailable as exc:
                checks[name] = exc.detail
                failed.append(name)
        return checks, failed


def register(app: Flask, *, service: str, ready_checks: dict[str, Callable[[], None]]) -> None:
    settings = app.extensions["settings"]
    readiness = Readiness(ready_checks, ttl=settings.ready_cache_seconds)
    app.extensions["readiness"] = readiness

    def internal(view):
        return internal_only(view, allowed=settings.ops_allowed_networks)

    @app.before_request
    def _start():
        g.started = time.perf_counter()
        g.request_id = _request_id()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        # The API takes JSON; the web console's HTML forms (outside /api, which the
        # gateway forwards to it) post form data.
        if (
            (service not in ("gateway", "web") or request.path == "/api" or request.path.startswith("/api/"))
            and request.method in _BODY_METHODS
            and (request.content_length or request.headers.get("Transfer-Encoding"))
            and not request.is_json
        ):
            return problem(415, "the request body must be application/json")

    # Each (method, route[, status])'s metric children, found once: prometheus_client's labels()
    # converts and locks on every call. The pool gauges are sampled at most once a second
    # (and at every scrape), not after every request: 13 -> 3 us per request.
    counted: dict[tuple, object] = {}
    timed: dict[tuple, object] = {}
    pool_sampled = [0.0]

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID] = g.get("request_id") or _request_id()
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        if route not in ("/metrics", "/health"):
            method, status = request.method, response.status_code
            counter = counted.get((method, route, status))
            if counter is None:
                counter = counted[(method, route, status)] = metrics.REQUESTS.labels(service, method, route, status)
            counter.inc()
            histogram = timed.get((method, route))
            if histogram is None:
                histogram = timed[(method, route)] = metrics.LATENCY.labels(service, method, route)
            histogram.observe(elapsed)
            now = time.monotonic()
            if now - pool_sampled[0] >= 1.0:
                pool_sampled[0] = now
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
    @internal
    def ready():
        checks, failed = readiness.result()
        if failed:
            return problem(
                503, "not ready: " + ", ".join(failed) + " unavailable", checks=checks, failed=failed
            )
        return jsonify(status="ready", checks=checks)

    @ops.get("/metrics")
    @internal
    def prometheus():
        body, content_type = metrics.render(service)
        return Response(body, content_type=content_type)

    app.register_blueprint(ops)
