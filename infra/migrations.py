"""Create the database and schemas, apply each schema's migrations, then the roles.

Runs as the owner that DATABASE_URL names. Safe to run twice and from several
processes at once: a session advisory lock serialises whole runs, and pgdbm locks
each module as it applies a file. The last step of every run creates the database
roles and re-applies their grants (infra/roles.py).
"""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pgdbm import AsyncMigrationManager

from config.settings import SCHEMAS, Settings
from infra import roles
from infra.db import Database

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
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin_dsn = urlunsplit(parts._replace(path="/postgres"))
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

    anyio.run(ensure_database, settings.database_url)
    db = Database(dsn=settings.database_url, schemas=SCHEMAS + (SHARED[0],), min_size=1, max_size=2,
                  timeout=settings.db_timeout, application_name="oms-migrate",
                  statement_timeout_ms=settings.db_statement_timeout_ms, lock_timeout_ms=settings.db_lock_timeout_ms)
    db.start()
    try:
        return db.run(apply_all, db, role_prefix=settings.role_prefix,
                      role_passwords={k: str(v) for k, v in settings.db_role_passwords.items()}, timeout=timeout)
    finally:
        db.close()


async def apply_all(db: Database, *, role_prefix: str,
                    role_passwords: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Create every schema, apply its pending migrations, then the roles of ``role_prefix``."""
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
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)
    return applied
