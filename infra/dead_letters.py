"""Messages whose task gave up, kept in the shared dead_letters table to be redriven."""
from __future__ import annotations

import json
import uuid

SCHEMA = "public"


async def record(db, *, task_name: str, task_id: str | None, queue: str | None, args: list, kwargs: dict,
                 error: str, attempts: int) -> uuid.UUID:
    return await db.fetch_value(
        "INSERT INTO {{tables.dead_letters}} (task_name, task_id, queue, args, kwargs, error, attempts) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        task_name, task_id, queue, json.dumps(args, default=str), json.dumps(kwargs, default=str),
        error[:2000], attempts,
    )


async def list_open(db, *, limit: int = 100) -> list[dict]:
    rows = await db.fetch_all(
        "SELECT id, task_name, task_id, queue, args, kwargs, error, attempts, created_at "
        "FROM {{tables.dead_letters}} WHERE redriven_at IS NULL ORDER BY created_at LIMIT $1",
        limit,
    )
    return [{**r, "args": json.loads(r["args"]), "kwargs": json.loads(r["kwargs"])} for r in rows]


async def count_open(db) -> int:
    return await db.fetch_value("SELECT count(*) FROM {{tables.dead_letters}} WHERE redriven_at IS NULL")


async def counts(db) -> dict:
    """Open dead letters and all of them (metrics figures)."""
    return await db.fetch_one(
        "SELECT count(*) FILTER (WHERE redriven_at IS NULL) AS open, count(*) AS total FROM {{tables.dead_letters}}")


async def redrive(db, *, ids: list[uuid.UUID] | None, send) -> list[uuid.UUID]:
    """Send the chosen (or all open) dead letters again and mark them redriven, in one transaction."""
    async with db.transaction() as tx:
        if ids is None:
            rows = await tx.fetch_all(
                "SELECT id, task_name, queue, args, kwargs FROM {{tables.dead_letters}} "
                "WHERE redriven_at IS NULL ORDER BY created_at FOR UPDATE SKIP LOCKED"
            )
        else:
            rows = await tx.fetch_all(
                "SELECT id, task_name, queue, args, kwargs FROM {{tables.dead_letters}} "
                "WHERE id = ANY($1::uuid[]) AND redriven_at IS NULL FOR UPDATE",
                ids,
            )
        import anyio

        for row in rows:
            await anyio.to_thread.run_sync(
                lambda r=row: send(r["task_name"], json.loads(r["args"]), json.loads(r["kwargs"]), r["queue"])
            )
        done = [r["id"] for r in rows]
        if done:
            await tx.execute(
                "UPDATE {{tables.dead_letters}} SET redriven_at = now() WHERE id = ANY($1::uuid[])", done
            )
        return done
