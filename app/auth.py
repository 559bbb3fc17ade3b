"""JWT verification and issuance (flask-jwt-extended), the same on every process.

Every failure - missing, malformed, expired, wrongly signed, `alg: none`, wrong
type, revoked - is a 401 problem with `WWW-Authenticate: Bearer`. A token is revoked
when its session (`fam`) was logged out or the user ended every session since it was
issued (its `gen` is older); while that cannot be checked (Redis down) the answer is
503 unless AUTH_REVOCATION_FAIL_OPEN. No token outlives its session's end (`sxp`).
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from functools import wraps

from flask import Flask
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    get_jwt,
    verify_jwt_in_request,
)

from app.errors import problem
from config.settings import Settings
from infra.errors import Forbidden, Unavailable

logger = logging.getLogger(__name__)


def init_jwt(app: Flask, settings: Settings, *, is_revoked) -> JWTManager:
    app.config.update(
        JWT_SECRET_KEY=str(settings.jwt_secret_key),
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],  # never "none", never an algorithm the token names
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(seconds=settings.access_token_ttl),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(seconds=settings.refresh_token_ttl),
        JWT_ERROR_MESSAGE_KEY="detail",
    )
    jwt = JWTManager(app)

    def refuse(detail: str):
        return problem(401, detail, type_="/problems/unauthorized")

    jwt.unauthorized_loader(lambda reason: refuse("a Bearer token is required"))
    jwt.invalid_token_loader(lambda reason: refuse("the token is invalid"))
    jwt.expired_token_loader(lambda header, payload: refuse("the token has expired"))
    jwt.revoked_token_loader(lambda header, payload: refuse("the token has been revoked"))
    jwt.needs_fresh_token_loader(lambda header, payload: refuse("a fresh token is required"))
    jwt.token_verification_failed_loader(lambda header, payload: refuse("the token is invalid"))
    jwt.user_lookup_error_loader(lambda header, payload: refuse("the token is invalid"))

    @jwt.token_in_blocklist_loader
    def _revoked(header, payload) -> bool:
        family, user_id = payload.get("fam"), payload.get("sub")
        if not family or not user_id:
            return True
        try:
            return is_revoked(family=family, user_id=user_id, generation=int(payload.get("gen", 0)))
        except Unavailable:
            if settings.auth_revocation_fail_open:
                # Redis down: signature and expiry still hold; a token revoked in the
                # last minutes keeps working until Redis returns (bounded by its TTL).
                logger.warning("revocation store unavailable; accepting a signed, unexpired token")
                return False
            raise

    return jwt


def issue_tokens(*, user_id, role: str, generation: int, family: str, refresh_jti: str,
                 refresh_expires_at: int, session_ends_at: int, access_ttl: int) -> dict:
    """A token pair for a session grant (services.users.service); neither outlives the session."""
    identity = str(user_id)
    now = int(time.time())
    access_expires_at = min(now + access_ttl, session_ends_at)
    claims = {"fam": family, "role": role, "gen": generation, "sxp": session_ends_at}
    return {
        "access_token": create_access_token(
            identity, additional_claims={**claims, "jti": uuid.uuid4().hex, "exp": access_expires_at}
        ),
        "refresh_token": create_refresh_token(
            identity, additional_claims={**claims, "jti": refresh_jti, "exp": refresh_expires_at}
        ),
        "token_type": "Bearer",
        "expires_in": max(access_expires_at - now, 0),
    }


def current_user_id() -> uuid.UUID:
    return uuid.UUID(get_jwt()["sub"])


def admin_required(view):
    """Access token required and its role must be admin (403 otherwise)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        verify_jwt_in_request()
        if get_jwt().get("role") != "admin":
            raise Forbidden("this action needs the admin role")
        return view(*args, **kwargs)

    return wrapper
