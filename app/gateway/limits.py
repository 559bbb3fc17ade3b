"""Rate limits at the gateway (flask-limiter, Redis storage shared by every gateway worker).

Per user when the request carries a validly signed access token, per client IP
otherwise; login has its own stricter limit per email and IP. Over the limit ->
429 problem with Retry-After; every limited response carries RateLimit-* headers.
While Redis is down, limits are not enforced rather than failing requests.
"""
from __future__ import annotations

import hashlib
import threading
import time

from flask import Flask, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter
from limits.storage import RedisStorage

from config.settings import Settings


class HitRedisStorage(RedisStorage):
    """limits' Redis storage whose hit also answers the window flask-limiter asks for next.

    With headers enabled, flask-limiter follows every hit (EVALSHA) with a GET and a TTL
    of the same key to write RateLimit-Remaining / -Reset: three round trips per request,
    the largest cost of a gateway request in the read benchmark. Here the increment
    script returns the count and the TTL together, and the thread that made the hit
    reads them back from memory (for a second at most) instead of asking Redis again.
    limits finds storages by URI scheme, hence the scheme of its own.
    """

    STORAGE_SCHEME = ["oms+redis", "oms+rediss", "oms+redis+unix"]
    # RateLimit-* headers from the hit: 1 Redis round trip per request instead of 3; guard: tests/test_library_guards.py
    SCRIPT_INCR_TTL = """
local current = redis.call("incrby", KEYS[1], tonumber(ARGV[2]))
if tonumber(current) == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""
    FRESH_SECONDS = 1.0

    def __init__(self, uri: str, **options) -> None:
        super().__init__(uri[len("oms+"):], **options)
        self._seen = threading.local()

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_incr_ttl = self.get_connection().register_script(self.SCRIPT_INCR_TTL)

    def _recent(self, key: str):
        seen = getattr(self._seen, "hit", None)
        if seen is not None and seen[0] == key and time.monotonic() - seen[3] < self.FRESH_SECONDS:
            return seen
        return None

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        key = self.prefixed_key(key)
        count, ttl = self.lua_incr_ttl([key], [expiry, amount])
        self._seen.hit = (key, int(count), time.time() + max(int(ttl), 0), time.monotonic())
        return int(count)

    def get(self, key: str) -> int:
        seen = self._recent(self.prefixed_key(key))
        return seen[1] if seen is not None else super().get(key)

    def get_expiry(self, key: str) -> float:
        seen = self._recent(self.prefixed_key(key))
        if seen is None:
            return super().get_expiry(key)
        self._seen.hit = None  # read once: the next request asks again
        return seen[2]


def _storage_uri(redis_url: str) -> str:
    # limits spells a Redis unix socket "redis+unix://".
    uri = "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") else redis_url
    return "oms+" + uri


def client_key() -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        try:
            # Signature and expiry only: a forged token must not buy a fresh bucket.
            return "user:" + decode_token(header[7:])["sub"]
        except Exception:  # any invalid token: limited by IP like anonymous traffic
            pass
    return "ip:" + (request.remote_addr or "unknown")


def page_key() -> str:
    return "page:" + (request.remote_addr or "unknown")


def is_static() -> bool:
    return request.path.startswith("/static/")


def login_key() -> str:
    body = request.get_json(silent=True) if request.is_json else None
    email = body.get("email") if isinstance(body, dict) and isinstance(body.get("email"), str) else ""
    # surrogatepass: a lone surrogate (refused by the users service with a 422) must not
    # make the key function fail; distinct strings still give distinct keys.
    digest = hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()[:16]
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
        # One bucket per client for the whole API, whichever route answers.
        application_limits=[settings.rate_limit_default],
        application_limits_exempt_when=lambda: not request.path.startswith("/api/")
        or request.path in ("/api/openapi.json", "/api/docs") or request.path.startswith("/api/docs/"),
    )
    return limiter
