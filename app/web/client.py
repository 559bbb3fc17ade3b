"""The web console's client of the public API, through the gateway, as the signed-in user.

A 401 on a user's call is answered by refreshing the tokens once (``/api/auth/refresh``
with the refresh cookie) and retrying; the new pair goes back to the browser in the
cookies of the response. Refresh tokens rotate and reusing one ends the whole login
session, so no request of one browser may present a refresh token twice: the first takes
a Redis lock, rotates, and leaves the new pair (encrypted with a key derived from
WEB_SECRET_KEY) for the others of that browser that still carry the old cookie, for
``PAIR_KEPT_SECONDS``; after that, a mark that the token was used stays until the token
would have expired anyway, and a request that late is asked to sign in (its cookies left
as they are) instead of presenting the used token.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import urllib3
from flask import current_app, g, has_request_context, request

from config.settings import Settings

logger = logging.getLogger(__name__)

ACCESS_COOKIE = "oms_access"
REFRESH_COOKIE = "oms_refresh"
_REFRESH_WAIT_SECONDS = 5.0
# Longer than the refresh call may take (its read timeout), so a slow rotation is never
# repeated by a request that finds the lock gone.
_REFRESH_LOCK_SECONDS = 15
PAIR_KEPT_SECONDS = 60  # for the late requests of a browser that still carry the old refresh cookie


class ApiUnavailable(Exception):
    """The gateway could not be reached, or answered 503/504/429: shown as a 503 page."""

    status = 503

    def __init__(self, retry_after: int = 1):
        super().__init__("the API is unavailable")
        self.retry_after = retry_after


class RateLimited(ApiUnavailable):
    """The gateway's rate limit (429): shown as a 429 page, or next to the login form."""

    status = 429


class SignedOut(Exception):
    """The user's tokens no longer work (expired session, logged out elsewhere): sign in again."""


class StaleRefresh(Exception):
    """A request that still carries a refresh token another request of this browser rotated
    long ago: asked to sign in, its session (and the browser's newer cookies) left alone."""


@dataclass
class Answer:
    status: int
    data: dict | list | None
    headers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def field_errors(self) -> dict[str, list[str]]:
        """The problem's ``errors`` (field -> messages), for showing next to each field."""
        errors = (self.data or {}).get("errors") if isinstance(self.data, dict) else None
        return errors if isinstance(errors, dict) else {}

    @property
    def detail(self) -> str:
        return (self.data or {}).get("detail", "") if isinstance(self.data, dict) else ""


class Gateway:
    def __init__(self, settings: Settings):
        self.base = settings.gateway_url
        self.http = urllib3.PoolManager(
            maxsize=16,
            timeout=urllib3.Timeout(connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout),
            retries=False,
        )

    def call(self, method: str, path: str, *, body: dict | None = None, token: str | None = None,
             headers: dict | None = None) -> Answer:
        sent = {"Accept": "application/json"}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if body is not None:
            sent["Content-Type"] = "application/json"
        if getattr(g, "request_id", None):
            sent["X-Request-ID"] = g.request_id
        if has_request_context():
            # Who the browser is, as the gateway in front of us said (or our own peer when
            # reached directly): the gateway's console listener believes it for one hop.
            sent["X-Forwarded-For"] = request.headers.get("X-Forwarded-For") or request.remote_addr or ""
        sent.update(headers or {})
        try:
            response = self.http.request(method, self.base + path, headers=sent,
                                         body=json.dumps(body).encode() if body is not None else None)
        except urllib3.exceptions.HTTPError as exc:
            logger.warning("gateway unreachable", extra={"error": type(exc).__name__})
            raise ApiUnavailable() from None
        if response.status == 429:
            raise RateLimited(_retry_after(response.headers.get("Retry-After")))
        if response.status in (503, 504):
            raise ApiUnavailable(_retry_after(response.headers.get("Retry-After")))
        data = None
        if response.data and "json" in (response.headers.get("Content-Type") or ""):
            data = json.loads(response.data)
        return Answer(response.status, data, dict(response.headers))

    def health(self) -> None:
        from infra.errors import Unavailable

        try:
            response = self.http.request("GET", self.base + "/health", timeout=urllib3.Timeout(total=1.0))
        except urllib3.exceptions.HTTPError:
            raise Unavailable("the gateway is unreachable") from None
        if response.status != 200:
            raise Unavailable(f"the gateway answered {response.status}")


def _retry_after(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


def gateway() -> Gateway:
    return current_app.extensions["web_client"]


def anonymous(method: str, path: str, **kwargs) -> Answer:
    return gateway().call(method, path, **kwargs)


def as_user(method: str, path: str, **kwargs) -> Answer:
    """Call the API with the user's access token; on a 401 refresh the pair once and retry."""
    access, refresh = tokens()
    if not access and not refresh:
        raise SignedOut()
    answer = gateway().call(method, path, token=access, **kwargs) if access else None
    if answer is not None and answer.status != 401:
        return answer
    access = _refreshed(refresh)
    answer = gateway().call(method, path, token=access, **kwargs)
    if answer.status == 401:
        raise SignedOut()
    return answer


def tokens() -> tuple[str | None, str | None]:
    """This request's (access, refresh) tokens: a pair refreshed during it, or the cookies."""
    pair = g.get("new_tokens")
    if pair:
        return pair["access_token"], pair["refresh_token"]
    return request.cookies.get(ACCESS_COOKIE), request.cookies.get(REFRESH_COOKIE)


def refresh_keys(refresh: str) -> tuple[str, str, str]:
    """Redis keys of one refresh token's rotation: the new pair, the lock, the used mark."""
    base = "oms:web:refresh:" + hashlib.sha256(refresh.encode()).hexdigest()
    return base, base + ":lock", base + ":used"


def _fernet():
    from cryptography.fernet import Fernet

    secret = str(current_app.extensions["settings"].web_secret_key)
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"oms-web-token-pair:" + secret.encode()).digest()))


def _seal(pair: dict) -> bytes:
    return _fernet().encrypt(json.dumps(pair).encode())


def _unseal(sealed) -> dict:
    from cryptography.fernet import InvalidToken

    try:
        return json.loads(_fernet().decrypt(sealed if isinstance(sealed, bytes) else sealed.encode()))
    except (InvalidToken, ValueError):
        return {}  # another key (WEB_SECRET_KEY changed) or garbage: nothing to hand over


def _lifetime(token: str) -> int:
    """Seconds until ``token`` expires (read, not verified: the API verifies it), at least 1."""
    import jwt

    try:
        expires = int(jwt.decode(token, options={"verify_signature": False}).get("exp", 0))
    except (jwt.PyJWTError, ValueError, TypeError):
        expires = 0
    settings = current_app.extensions["settings"]
    return max(1, min(expires - int(time.time()), settings.refresh_token_ttl))


def _refreshed(refresh: str | None) -> str:
    if not refresh:
        raise SignedOut()
    from app.web import cart

    redis = cart.redis()
    pair_key, lock_key, used_key = refresh_keys(refresh)
    deadline = time.monotonic() + _REFRESH_WAIT_SECONDS
    while True:
        sealed = redis.get(pair_key)
        if sealed is not None:  # rotated by another request of this browser: take its pair
            pair = _unseal(sealed)
            if not pair:
                raise SignedOut()
            break
        if redis.exists(used_key):
            raise StaleRefresh()
        if redis.set(lock_key, "1", nx=True, ex=_REFRESH_LOCK_SECONDS):
            try:
                pair = _rotate(redis, refresh, pair_key, used_key)
            finally:
                redis.delete(lock_key)
            break
        if time.monotonic() > deadline:
            raise ApiUnavailable()
        time.sleep(0.05)
    g.new_tokens = pair
    return pair["access_token"]


def _rotate(redis, refresh: str, pair_key: str, used_key: str) -> dict:
    answer = gateway().call("POST", "/api/auth/refresh", token=refresh)
    if answer.status != 200:
        redis.set(pair_key, _seal({}), ex=PAIR_KEPT_SECONDS)  # the others waiting: signed out too
        raise SignedOut()
    pair = {"access_token": answer.data["access_token"], "refresh_token": answer.data["refresh_token"],
            "expires_in": answer.data.get("expires_in")}
    with redis.pipeline(transaction=False) as pipe:
        pipe.set(pair_key, _seal(pair), ex=PAIR_KEPT_SECONDS)
        pipe.set(used_key, "1", ex=_lifetime(refresh))
        pipe.execute()
    return pair
