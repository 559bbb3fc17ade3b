"""SQL of the users schema, through its pgdbm manager (tables as {{tables.x}})."""
from __future__ import annotations

import uuid

import asyncpg
from pgdbm import AsyncDatabaseManager

from infra import messaging
from services.users import events
from services.users.errors import EmailTaken

_USER_COLUMNS = "id, email, name, role, phone, created_at, updated_at"


async def insert_user(
    db: AsyncDatabaseManager, *, email: str, name: str, password_hash: str, role: str, phone: str | None
) -> dict:
    """Insert the user and its user.registered event in one transaction; returns (user, event)."""
    try:
        async with db.transaction() as tx:
            user = await tx.fetch_one(
                "INSERT INTO {{tables.users}} (email, name, password_hash, role, phone) "
                "VALUES ($1, $2, $3, $4, $5) RETURNING " + _USER_COLUMNS,
                email, name, password_hash, role, phone,
            )
            event = await messaging.add_event(
                tx, event_type=events.USER_REGISTERED, aggregate_id=user["id"], payload=events.user_profile(user)
            )
            return user, event
    except asyncpg.UniqueViolationError:
        raise EmailTaken("a user with this email already exists") from None


async def get_credentials(db: AsyncDatabaseManager, *, email: str) -> dict | None:
    # The session generation comes from the same row as the hash: a login that checked
    # the old password gets the old generation, which the change has already ended.
    return await db.fetch_one(
        "SELECT id, role, password_hash, session_generation FROM {{tables.users}} WHERE lower(email) = lower($1)",
        email,
    )


async def get_session_state(db: AsyncDatabaseManager, *, user_id: uuid.UUID) -> dict | None:
    """What a refresh needs to know of the account now: {id, role, session_generation}."""
    return await db.fetch_one(
        "SELECT id, role, session_generation FROM {{tables.users}} WHERE id = $1", user_id
    )


async def end_sessions(db: AsyncDatabaseManager, *, user_id: uuid.UUID) -> int | None:
    """Raise the user's session generation (every current session ends); the new one, or None."""
    return await db.fetch_value(
        "UPDATE {{tables.users}} SET session_generation = session_generation + 1 WHERE id = $1 "
        "RETURNING session_generation",
        user_id,
    )


async def get_user(db: AsyncDatabaseManager, *, user_id: uuid.UUID) -> dict | None:
    return await db.fetch_one(
        "SELECT " + _USER_COLUMNS + " FROM {{tables.users}} WHERE id = $1", user_id
    )


async def update_user(db: AsyncDatabaseManager, *, user_id: uuid.UUID, changes: dict) -> tuple:
    """Apply profile changes and write user.updated in the same transaction; returns (user, event)."""
    # Column names come from a fixed allowlist, never from the request.
    allowed = [c for c in ("name", "phone") if c in changes]
    if not allowed:
        return await get_user(db, user_id=user_id), None
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(allowed))
    async with db.transaction() as tx:
        user = await tx.fetch_one(
            "UPDATE {{tables.users}} SET " + sets + ", updated_at = now() WHERE id = $1 RETURNING "
            + _USER_COLUMNS,
            user_id, *[changes[c] for c in allowed],
        )
        if user is None:
            return None, None
        event = await messaging.add_event(
            tx, event_type=events.USER_UPDATED, aggregate_id=user["id"], payload=events.user_profile(user)
        )
        return user, event


async def upsert_admin(db: AsyncDatabaseManager, *, email: str, name: str, password_hash: str) -> dict:
    """Create the admin, or make the existing account of that email an admin with that password.

    An existing account's sessions end with the change (its session generation goes up).
    """
    async with db.transaction() as tx:
        user = await tx.fetch_one(
            "UPDATE {{tables.users}} SET role = 'admin', password_hash = $2, updated_at = now(), "
            "session_generation = session_generation + 1 "
            "WHERE lower(email) = lower($1) RETURNING session_generation, " + _USER_COLUMNS,
            email, password_hash,
        )
        if user is not None:
            return user
    user, _ = await insert_user(
        db, email=email, name=name, password_hash=password_hash, role="admin", phone=None
    )
    return user
