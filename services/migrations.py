"""Create the database and schemas and apply each schema's migrations.

Safe to run twice and from several processes at once: a session advisory lock
serialises whole runs, and pgdbm locks each module as it applies a file.
"""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pgdbm import AsyncMigrationManager

from config.settings import SCHEMAS
from services.db import Database

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


async def apply_all(db: Database) -> dict[str, list[str]]:
    """Create every schema and apply its pending migrations; returns applied files per schema."""
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
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)
    return applied
