"""Login sessions in Redis: refresh-token rotation and revocation.

A login opens a session (a "family"). Each refresh token's jti is an allowlist
key (`rt:<jti>`) with the refresh lifetime as TTL; refreshing consumes it
atomically (GETDEL) and issues the next one, so a token works once. Reusing a
consumed refresh token revokes the whole family (it was probably stolen).
Logout revokes the family too: `revoked:<family>` lives as long as any token
of that family could, and every access-token check looks it up.
"""
from __future__ import annotations

import uuid

import redis

from services import runtime
from services.errors import Unavailable
from services.users.errors import SessionRevoked


class SessionStore:
    def __init__(self, client: redis.Redis, *, refresh_ttl: int):
        self.redis = client
        self.refresh_ttl = refresh_ttl

    def open(self, *, user_id: str) -> tuple[str, str]:
        """Start a session; returns (family, refresh jti)."""
        family, jti = uuid.uuid4().hex, uuid.uuid4().hex
        self._do(self.redis.set, f"rt:{jti}", f"{family}:{user_id}", ex=self.refresh_ttl)
        return family, jti

    def rotate(self, *, jti: str, family: str, user_id: str) -> str:
        """Consume refresh token ``jti`` and return the next jti of its family."""
        owner = self._do(self.redis.getdel, f"rt:{jti}")
        if owner is None:
            # Already used or revoked: treat as theft and end the session for everyone.
            self.revoke(family=family)
            raise SessionRevoked("refresh token has already been used or revoked")
        if owner != f"{family}:{user_id}" or self.is_revoked(family=family):
            raise SessionRevoked("refresh token has been revoked")
        new_jti = uuid.uuid4().hex
        self._do(self.redis.set, f"rt:{new_jti}", owner, ex=self.refresh_ttl)
        return new_jti

    def revoke(self, *, family: str, refresh_jti: str | None = None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"revoked:{family}", "1", ex=self.refresh_ttl)
        if refresh_jti:
            pipe.delete(f"rt:{refresh_jti}")
        self._do(pipe.execute)

    def is_revoked(self, *, family: str) -> bool:
        return bool(self._do(self.redis.exists, f"revoked:{family}"))

    @staticmethod
    def _do(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError:
            raise Unavailable("session store is unavailable") from None


def store() -> SessionStore:
    """The session store of this process (its Redis client, its refresh lifetime)."""
    rt = runtime.get()
    return SessionStore(rt.redis, refresh_ttl=rt.settings.refresh_token_ttl)
