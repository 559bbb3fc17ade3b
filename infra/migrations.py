"""Create the database and schemas, apply each schema's migrations, then the roles.

Runs as the owner that MIGRATIONS_DATABASE_URL (else DATABASE_URL) names. Safe to run
twice and from several processes at once: a session advisory lock serialises whole
runs, and pgdbm locks each module as it applies a file. The last steps of every run
create the database roles, re-apply their grants (infra/roles.py) and set their
session defaults (``set_role_defaults``).

A run needs a session of its own: its lock is held across many transactions (pgdbm's
own lock is session-level too when a file runs outside a transaction), and it creates
the database. Behind PgBouncer in transaction mode consecutive statements of one client
may reach different server connections, so the lock would be taken on one and released
(or not) on another. A transaction-scoped lock would need the whole run in one
transaction, which CREATE DATABASE and pgdbm's per-file transactions rule out. So with
DATABASE_POOLER set, migrations connect to PostgreSQL itself through
MIGRATIONS_DATABASE_URL, as operators run them, and refuse to start without it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import asyncpg
from pgdbm import AsyncMigrationManager

from config import dburl
from config.settings import SCHEMAS, ConfigError, Settings
from infra import roles
from infra.db import Database, role_defaults

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SHARED = ("public", "shared")  # (schema, folder) of the shared tables
MIGRATE_LOCK_KEY = 0x6F6D735F6D6967  # "oms_mig": one whole-run lock for every process


def plan() -> list[tuple[str, Path]]:
    """(schema, folder) in the order they are applied: shared tables first."""
    return [(SHARED[0], MIGRATIONS_DIR / SHARED[1])] + [(s, MIGRATIONS_DIR / s) for s in SCHEMAS]


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it does not exist. True if created."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = dburl.database_name(dsn)
    admin_dsn = dburl.with_database(dsn, "postgres")
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
    except asyncpg.DuplicateDatabaseError:
        return False  # another process won the race
    finally:
        await conn.close()
    logger.info("created database %s", name)
    return True


def migrate(settings: Settings, *, timeout: float = 300.0) -> dict[str, list[str]]:
    """The whole run, as the owner, on a pool of its own; returns applied files per schema."""
    import anyio

    if settings.database_pooler and not settings.migrations_database_url:
        raise ConfigError(
            f"configuration error: with DATABASE_POOLER={settings.database_pooler} migrations need "
            "MIGRATIONS_DATABASE_URL, a URL of PostgreSQL itself (a run holds a session-level lock)")
    url = settings.migrations_url
    anyio.run(ensure_database, url)
    db = Database(dsn=url, schemas=SCHEMAS + (SHARED[0],), min_size=1, max_size=2,
                  timeout=settings.db_timeout, application_name="oms-migrate",
                  statement_timeout_ms=settings.db_statement_timeout_ms, lock_timeout_ms=settings.db_lock_timeout_ms)
    db.start()
    try:
        return db.run(apply_all, db, role_prefix=settings.role_prefix,
                      role_passwords={k: str(v) for k, v in settings.db_role_passwords.items()},
                      role_settings=role_defaults(statement_timeout_ms=settings.db_statement_timeout_ms,
                                                  lock_timeout_ms=settings.db_lock_timeout_ms),
                      timeout=timeout)
    finally:
        db.close()


async def apply_all(db: Database, *, role_prefix: str, role_passwords: dict[str, str] | None = None,
                    role_settings: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Create every schema, apply its pending migrations, then the roles of ``role_prefix``
    with ``role_settings`` as their defaults in this database."""
    roles.names(role_prefix)  # a prefix too long for the names stops the run before any change
    applied: dict[str, list[str]] = {}
    async with db.pool.acquire() as lock_conn:
        await lock_conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK_KEY)
        try:
            for schema, folder in plan():
                await lock_conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                manager = AsyncMigrationManager(
                    db.manager(schema), migrations_path=str(folder), module_name=schema
                )
                result = await manager.apply_pending_migrations()
                applied[schema] = [m["filename"] for m in result.get("applied", [])]
            await roles.apply(lock_conn, role_prefix, role_passwords)
            if role_settings:
                await set_role_defaults(lock_conn, role_prefix, role_settings)
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)
    return applied


async def set_role_defaults(conn, prefix: str, settings: Mapping[str, str]) -> None:
    """``ALTER ROLE <login> IN DATABASE <this one> SET`` each of ``settings`` for every login role.

    A direct connection asks for the same values as startup parameters, which win; behind
    PgBouncer (which refuses those parameters) the server applies these to each of its
    connections instead, whatever pooled client then uses it. A worker's ``SET LOCAL
    ROLE`` keeps its login's. Idempotent.
    """
    database = await conn.fetchval("SELECT current_database()")
    statements = [f"ALTER ROLE {roles.ident(role)} IN DATABASE {roles.ident(database)} SET {name} = "
                  + _quoted(value)
                  for role in roles.names(prefix).values() for name, value in settings.items()]
    await conn.execute(";\n".join(statements))


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
