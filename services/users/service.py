"""The users domain's public operations (sync; database work runs on the process loop)."""
from __future__ import annotations

import logging
import uuid

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from infra import runtime
from services.users import repository
from infra.errors import Unavailable
from services.users.errors import InvalidCredentials, LoginThrottled, SessionRevoked, UserNotFound
from services.users import sessions as session_store
from services.users import throttle as login_throttle

logger = logging.getLogger(__name__)

SCHEMA = "users"
_hasher = PasswordHasher()
# Verified against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def _db():
    return runtime.db().manager(SCHEMA)


sessions = session_store.store


def register_user(*, email: str, name: str, password: str, phone: str | None = None) -> dict:
    password_hash = _hasher.hash(password)  # CPU-bound: in the calling thread, not on the loop
    user, event = runtime.db().run(
        repository.insert_user, _db(), email=email, name=name, password_hash=password_hash,
        role="customer", phone=phone,
    )
    runtime.get().publish(SCHEMA, [event])
    logger.info("user registered", extra={"user_id": str(user["id"])})
    return user


def authenticate(*, email: str, password: str, client: str | None = None) -> dict:
    """Return {id, role, session_generation} for valid credentials; the same InvalidCredentials otherwise.

    Throttled (LoginThrottled, 429) per account and ``client`` (the caller's address), and per
    account across clients it has not logged in from (services/users/throttle.py).
    """
    row = runtime.db().run(repository.get_credentials, _db(), email=email)
    account = login_throttle.account_key(user_id=row["id"] if row else None, email=email)
    throttle = login_throttle.throttle()
    try:
        throttle.admit(account=account, client=client)
    except LoginThrottled:
        # An id for the monitoring of attacks; an unknown email is not named at all.
        logger.warning("login throttled", extra={"user_id": str(row["id"]) if row else None})
        raise
    try:
        _hasher.verify(row["password_hash"] if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        raise InvalidCredentials("wrong email or password") from None
    if row is None:
        raise InvalidCredentials("wrong email or password")
    throttle.succeeded(account=account, client=client)
    return {"id": row["id"], "role": row["role"], "session_generation": row["session_generation"]}


def start_session(*, user_id, role: str, session_generation: int = 0) -> dict:
    """Open a login session; returns the grant its first token pair is issued from."""
    session = sessions().open(user_id=str(user_id))
    return _grant(user_id=user_id, role=role, generation=session_generation, session=session)


def log_in(*, email: str, password: str, client: str | None = None) -> dict:
    user = authenticate(email=email, password=password, client=client)
    return start_session(user_id=user["id"], role=user["role"], session_generation=user["session_generation"])


def refresh_session(*, user_id: uuid.UUID, family: str, refresh_jti: str, generation: int,
                    ends_at: int | None) -> dict:
    """Rotate a refresh token; the role and whether the account may go on come from the database."""
    if ends_at is None:
        raise SessionRevoked("refresh token has been revoked")  # issued before sessions had an end
    account = runtime.db().run(repository.get_session_state, _db(), user_id=user_id)
    if account is None or account["session_generation"] > generation:
        raise SessionRevoked("refresh token has been revoked")
    session = sessions().rotate(jti=refresh_jti, family=family, user_id=str(user_id), ends_at=ends_at)
    return _grant(user_id=user_id, role=account["role"], generation=account["session_generation"], session=session)


def end_session(*, family: str) -> None:
    sessions().revoke(family=family)


def end_all_sessions(*, user_id: uuid.UUID) -> None:
    """Every session of the user stops working: refresh at once, access tokens at their next check."""
    generation = runtime.db().run(repository.end_sessions, _db(), user_id=user_id)
    if generation is None:
        raise UserNotFound("no such user")
    _revoke_everywhere(user_id=user_id, generation=generation)


def _revoke_everywhere(*, user_id, generation: int) -> None:
    try:
        sessions().revoke_all(user_id=str(user_id), generation=generation)
    except Unavailable:
        # PostgreSQL already refuses these sessions a refresh; their access tokens would
        # live on until they expire. Doing it again is harmless.
        raise Unavailable("open sessions could not be ended right now; retry later") from None
    logger.info("all sessions ended", extra={"user_id": str(user_id), "session_generation": generation})


def _grant(*, user_id, role: str, generation: int, session: session_store.Session) -> dict:
    return {"user_id": user_id, "role": role, "generation": generation, "family": session.family,
            "refresh_jti": session.refresh_jti, "refresh_expires_at": session.refresh_expires_at,
            "session_ends_at": session.ends_at}


def get_profile(*, user_id: uuid.UUID) -> dict:
    user = runtime.db().run(repository.get_user, _db(), user_id=user_id)
    if user is None:
        raise UserNotFound("no such user")
    return user


def update_profile(*, user_id: uuid.UUID, changes: dict) -> dict:
    user, event = runtime.db().run(repository.update_user, _db(), user_id=user_id, changes=changes)
    if user is None:
        raise UserNotFound("no such user")
    if event:
        runtime.get().publish(SCHEMA, [event])
    return user


def create_admin(*, email: str, password: str, name: str = "Administrator") -> dict:
    """Create the admin, or reset the password of (and promote) the account of that email,
    ending its sessions."""
    user = runtime.db().run(
        repository.upsert_admin, _db(), email=email, name=name, password_hash=_hasher.hash(password)
    )
    if user.get("session_generation"):
        _revoke_everywhere(user_id=user["id"], generation=user["session_generation"])
    return user
