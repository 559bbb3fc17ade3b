"""The users domain's public operations (sync; database work runs on the process loop)."""
from __future__ import annotations

import uuid

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services import runtime
from services.users import repository
from services.users.errors import InvalidCredentials, UserNotFound
from services.users import sessions as session_store

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
    return user


def authenticate(*, email: str, password: str) -> dict:
    """Return {id, role} for valid credentials; the same InvalidCredentials otherwise."""
    row = runtime.db().run(repository.get_credentials, _db(), email=email)
    try:
        _hasher.verify(row["password_hash"] if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        raise InvalidCredentials("wrong email or password") from None
    if row is None:
        raise InvalidCredentials("wrong email or password")
    return {"id": row["id"], "role": row["role"]}


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
    return runtime.db().run(
        repository.upsert_admin, _db(), email=email, name=name, password_hash=_hasher.hash(password)
    )
