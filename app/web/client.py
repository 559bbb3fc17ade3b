"""The web console's client of the public API, through the gateway, as the signed-in user.

A 401 on a user's call is answered by refreshing the tokens once (``/api/auth/refresh``
with the refresh cookie) and retrying; the new pair goes back to the browser in the
cookies of the response. Refresh tokens rotate and reusing one ends the whole login
session, so concurrent requests of one browser (htmx polling several orders) must not
refresh the same token twice: the first takes a short Redis lock and leaves the new pair
there for the others to pick up.
"""
from __future__ import annotations

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
_REFRESH_KEPT_SECONDS = 30


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


def _refreshed(refresh: str | None) -> str:
    if not refresh:
        raise SignedOut()
    from app.web import cart

    redis = cart.redis()
    key = "oms:web:refresh:" + hashlib.sha256(refresh.encode()).hexdigest()
    if redis.set(key + ":lock", "1", nx=True, ex=int(_REFRESH_WAIT_SECONDS) * 2):
        answer = gateway().call("POST", "/api/auth/refresh", token=refresh)
        if answer.status != 200:
            redis.set(key, "{}", ex=_REFRESH_KEPT_SECONDS)
            raise SignedOut()
        pair = {"access_token": answer.data["access_token"], "refresh_token": answer.data["refresh_token"],
                "expires_in": answer.data.get("expires_in")}
        redis.set(key, json.dumps(pair), ex=_REFRESH_KEPT_SECONDS)
    else:  # another request of this browser is refreshing this very token: take its pair
        deadline = time.monotonic() + _REFRESH_WAIT_SECONDS
        while (found := redis.get(key)) is None:
            if time.monotonic() > deadline:
                raise ApiUnavailable()
            time.sleep(0.05)
        pair = json.loads(found)
        if not pair:
            raise SignedOut()
    g.new_tokens = pair
    return pair["access_token"]
