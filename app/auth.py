"""JWT verification and issuance (flask-jwt-extended), the same on every process.

Every failure - missing, malformed, expired, wrongly signed, `alg: none`, wrong
type, revoked - is a 401 problem with `WWW-Authenticate: Bearer`. A token is revoked
when its session (`fam`) was logged out or the user ended every session since it was
issued (its `gen` is older); while that cannot be checked (Redis down) the answer is
503 unless AUTH_REVOCATION_FAIL_OPEN. No token outlives its session's end (`sxp`).

A request's token is verified (signature, expiry) once per process, however often it is
asked for (the gateway's rate-limit key, then its route's check); revocation is one Redis
read (MGET of the session's and the user's keys) per check, never cached: a logged-out
token is refused by the next request, at the gateway and at every service.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from functools import wraps

import jwt as pyjwt
from flask import Flask, has_request_context, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    get_jwt,
    verify_jwt_in_request,
)
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.default_callbacks import default_decode_key_callback
from flask_jwt_extended.tokens import _decode_jwt

from app.errors import problem
from config.settings import Settings
from infra.errors import Forbidden, Unavailable

logger = logging.getLogger(__name__)


_DECODED = "oms.jwt.decoded"  # request.environ: {(token, csrf, allow_expired): claims or the error}


class _JWTManager(JWTManager):
    """flask-jwt-extended's manager, verifying a request's token once and in one pass.

    Every decode parses the token three times (claims and header unverified, to choose the
    key, then verified), and the gateway decodes each token twice (its rate-limit key, then
    its route's check): ~0.25 ms of the gateway's CPU per authenticated request. With one
    key (HS256, no ``decode_key_loader``) the verified parse is all it takes, and its result
    (or its error) is kept for the rest of the request. Replaces the library's private
    ``_decode_jwt_from_config``; guard: tests/test_library_guards.py.
    """

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        if not has_request_context():
            return self._decode_once(encoded_token, csrf_value, allow_expired)
        memo = request.environ.setdefault(_DECODED, {})
        key = (encoded_token, csrf_value, allow_expired)
        if key not in memo:
            try:
                memo[key] = self._decode_once(encoded_token, csrf_value, allow_expired)
            except Exception as exc:  # kept and raised again: the same answer for the whole request
                memo[key] = exc
        found = memo[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _decode_once(self, encoded_token: str, csrf_value, allow_expired: bool) -> dict:
        if self._decode_key_callback is not default_decode_key_callback:
            # A key chosen per token needs the unverified parse first: the library's way.
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        options = {
            "algorithms": jwt_config.decode_algorithms,
            "audience": jwt_config.decode_audience,
            "csrf_value": csrf_value,
            "encoded_token": encoded_token,
            "identity_claim_key": jwt_config.identity_claim_key,
            "issuer": jwt_config.decode_issuer,
            "leeway": jwt_config.leeway,
            "secret": jwt_config.decode_key,
            "verify_aud": jwt_config.decode_audience is not None,
            "verify_sub": jwt_config.verify_sub,
        }
        try:
            return _decode_jwt(**options, allow_expired=allow_expired)
        except pyjwt.ExpiredSignatureError as exc:
            # What the library's expired-token handler reads (and passes to our loader).
            exc.jwt_header = pyjwt.get_unverified_header(encoded_token)  # type: ignore[attr-defined]
            exc.jwt_data = _decode_jwt(**options, allow_expired=True)  # type: ignore[attr-defined]
            raise


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
    jwt = _JWTManager(app)

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
