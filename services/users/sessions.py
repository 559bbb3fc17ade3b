"""Login sessions in Redis: refresh-token rotation and revocation.

A login opens a session (a "family") that ends ``max_age`` seconds later whatever
happens; a refresh token lives ``refresh_ttl`` seconds unused, never past that end,
and rotation never moves the end. Each refresh token's jti is an allowlist key
(`rt:<jti>`) expiring with the token; refreshing consumes it atomically (GETDEL) and
issues the next one, so a token works once. Reusing a consumed refresh token revokes
the whole family (it was probably stolen). Logout revokes the family:
`revoked:<family>` lives as long as any token of that family could.

Ending every session of a user (logout-all, a password or role change) raises the
user's session generation in PostgreSQL, where refresh reads it; `sessions-gen:<user>`
mirrors it here for the access-token check every process makes, and a token of an
older generation is refused. The mirror expires when no session older than it can
still be alive, and only ever moves up.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from infra import runtime
from infra.errors import Unavailable
from services.users.errors import SessionRevoked

_RAISE_GENERATION = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class Session:
    family: str
    refresh_jti: str
    refresh_expires_at: int  # epoch seconds
    ends_at: int  # epoch seconds; no token of the session outlives it


class SessionStore:
    def __init__(self, client: redis.Redis, *, refresh_ttl: int, max_age: int):
        self.redis = client
        self.refresh_ttl = refresh_ttl
        self.max_age = max_age

    def open(self, *, user_id: str) -> Session:
        """Start a session."""
        now = int(time.time())
        family = uuid.uuid4().hex
        return self._allow(family=family, user_id=user_id, now=now, ends_at=now + self.max_age)

    def rotate(self, *, jti: str, family: str, user_id: str, ends_at: int) -> Session:
        """Consume refresh token ``jti`` and return the session with its next refresh token."""
        owner = self._do(self.redis.getdel, f"rt:{jti}")
        if owner is None:
            # Already used or revoked: treat as theft and end the session for everyone.
            self.revoke(family=family)
            raise SessionRevoked("refresh token has already been used or revoked")
        if owner != f"{family}:{user_id}" or self.is_revoked(family=family):
            raise SessionRevoked("refresh token has been revoked")
        now = int(time.time())
        if ends_at <= now:
            raise SessionRevoked("the session has ended; log in again")
        return self._allow(family=family, user_id=user_id, now=now, ends_at=ends_at)

    def revoke(self, *, family: str, refresh_jti: str | None = None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"revoked:{family}", "1", ex=self.refresh_ttl)
        if refresh_jti:
            pipe.delete(f"rt:{refresh_jti}")
        self._do(pipe.execute)

    def revoke_all(self, *, user_id: str, generation: int) -> None:
        """Refuse every token of ``user_id`` older than ``generation`` (set in PostgreSQL first)."""
        self._do(self.redis.eval, _RAISE_GENERATION, 1, self._generation_key(user_id), generation, self.max_age)

    def is_revoked(self, *, family: str, user_id: str | None = None, generation: int = 0) -> bool:
        if user_id is None:
            return bool(self._do(self.redis.exists, f"revoked:{family}"))
        revoked, current = self._do(self.redis.mget, f"revoked:{family}", self._generation_key(user_id))
        return revoked is not None or int(current or 0) > generation

    def _allow(self, *, family: str, user_id: str, now: int, ends_at: int) -> Session:
        jti = uuid.uuid4().hex
        expires_at = min(now + self.refresh_ttl, ends_at)
        self._do(self.redis.set, f"rt:{jti}", f"{family}:{user_id}", ex=max(expires_at - now, 1))
        return Session(family=family, refresh_jti=jti, refresh_expires_at=expires_at, ends_at=ends_at)

    @staticmethod
    def _generation_key(user_id: str) -> str:
        return f"sessions-gen:{user_id}"

    @staticmethod
    def _do(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError:
            raise Unavailable("session store is unavailable") from None


def store() -> SessionStore:
    """The session store of this process (its Redis client, its lifetimes)."""
    rt = runtime.get()
    return SessionStore(rt.redis, refresh_ttl=rt.settings.refresh_token_ttl,
                        max_age=rt.settings.session_max_age_seconds)
