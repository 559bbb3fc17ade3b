"""Rate limits at the gateway (flask-limiter, Redis storage shared by every gateway worker).

Per user when the request carries a validly signed access token, per client IP
otherwise; login has its own stricter limit per email and IP. Over the limit ->
429 problem with Retry-After; every limited response carries RateLimit-* headers.
While Redis is down, limits are not enforced rather than failing requests.
"""
from __future__ import annotations

import hashlib

from flask import Flask, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter

from config.settings import Settings


def _storage_uri(redis_url: str) -> str:
    # limits spells a Redis unix socket "redis+unix://".
    return "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url


def client_key() -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        try:
            # Signature and expiry only: a forged token must not buy a fresh bucket.
            return "user:" + decode_token(header[7:])["sub"]
        except Exception:  # any invalid token: limited by IP like anonymous traffic
            pass
    return "ip:" + (request.remote_addr or "unknown")


def login_key() -> str:
    body = request.get_json(silent=True) if request.is_json else None
    email = body.get("email") if isinstance(body, dict) and isinstance(body.get("email"), str) else ""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]
    return f"login:{digest}:{request.remote_addr or 'unknown'}"


def init_app(app: Flask, settings: Settings) -> Limiter:
    app.config.update(
        RATELIMIT_STORAGE_URI=_storage_uri(settings.redis_url),
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=False,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_HEADER_LIMIT="RateLimit-Limit",
        RATELIMIT_HEADER_REMAINING="RateLimit-Remaining",
        RATELIMIT_HEADER_RESET="RateLimit-Reset",
        RATELIMIT_HEADER_RETRY_AFTER="Retry-After",
        RATELIMIT_HEADER_RETRY_AFTER_VALUE="delta-seconds",
        RATELIMIT_KEY_PREFIX="oms",
    )
    limiter = Limiter(
        client_key,
        app=app,
        default_limits=[settings.rate_limit_default],
        default_limits_exempt_when=lambda: not request.path.startswith("/api/")
        or request.path in ("/api/openapi.json", "/api/docs"),
    )
    return limiter
