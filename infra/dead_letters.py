"""Messages whose task gave up, kept in the shared dead_letters table to be redriven.

Reading a dead letter's arguments and redriving it take the worker role's grants; the
gateway's role sees only ``id`` and ``redriven_at`` (``state``, ``count_open``).
"""
from __future__ import annotations

import json
import uuid

from infra import pagination
from infra.errors import InvalidState, NotFound

SCHEMA = "public"
LIST_TASK, REDRIVE_TASK = "dead_letters.list", "dead_letters.redrive"  # run by a worker (workers/tasks.py)
STATES = ("open", "all")
_MAX_EVENTS = 20
_SUBJECTS = ("order_id", "product_id", "user_id")


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


class DeadLetterNotFound(NotFound):
    slug = "dead-letter-not-found"


class AlreadyRedriven(InvalidState):
    slug = "dead-letter-redriven"


async def list_page(db, *, state: str, limit: int, before: tuple | None) -> list[dict]:
    """Dead letters newest first (``state`` open: not redriven yet), their arguments summarised."""
    args: list = []
    where = "redriven_at IS NULL" if state == "open" else "true"
    tail = pagination.newest_first(args, before=before, limit=limit)
    rows = await db.fetch_all(
        "SELECT id, task_name, task_id, queue, args, error, attempts, created_at, redriven_at "
        "FROM {{tables.dead_letters}} WHERE " + where + tail, *args)
    return [{**r, "args": summarise(json.loads(r["args"]))} for r in rows]


def summarise(args: list) -> dict:
    """What identifies a dead letter's message without its payload (which may hold customers'
    addresses): how many arguments, and each event's id, type, time and subject (an order,
    product or user id)."""
    found = []
    for arg in args if isinstance(args, list) else [args]:
        if isinstance(arg, dict):  # one event
            found.append(arg)
        elif isinstance(arg, list):  # a batch of events
            found += [event for event in arg if isinstance(event, dict)]
    events = []
    for event in found[:_MAX_EVENTS]:
        payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
        subject = next((f"{key}:{payload[key]}" for key in _SUBJECTS if _is_uuid(payload.get(key))), None)
        events.append({"id": _short(event.get("id")), "type": _short(event.get("type")),
                       "occurred_at": _short(event.get("occurred_at")), "subject": subject})
    return {"arguments": len(args) if isinstance(args, list) else 1, "events": events,
            "more_events": max(0, len(found) - _MAX_EVENTS)}


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def _short(value) -> str | None:
    return None if value is None else str(value)[:100]


async def state(db, *, dead_letter_id: uuid.UUID) -> str | None:
    """``open``, ``redriven``, or None for no such dead letter (the gateway's grant suffices)."""
    row = await db.fetch_one("SELECT redriven_at FROM {{tables.dead_letters}} WHERE id = $1", dead_letter_id)
    return None if row is None else "open" if row["redriven_at"] is None else "redriven"


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
