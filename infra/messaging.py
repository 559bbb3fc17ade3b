"""Outbox and inbox, the same in every schema that has them.

A state change and its event are written in one transaction (``add_event``); the
relay publishes committed rows and marks them (``claim_unpublished``,
``mark_published``). A consumer records the event id in its schema's inbox in the
same transaction as its effect (``first_delivery``): a redelivered event finds
its id and has no second effect.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime

from opentelemetry import propagate
from pgdbm import AsyncDatabaseManager


async def add_event(tx, *, event_type: str, aggregate_id: uuid.UUID | None, payload: dict,
                    headers: dict | None = None) -> dict:
    """Write an event to this schema's outbox inside the caller's transaction.

    The current trace context goes into the row's headers, so whoever publishes
    the event later (right after commit, or the sweep) continues the same trace.
    """
    headers = dict(headers or {})
    propagate.inject(headers)
    row = await tx.fetch_one(
        "INSERT INTO {{tables.outbox}} (event_type, aggregate_id, payload, headers) "
        "VALUES ($1, $2, $3, $4) RETURNING id, event_type, payload, headers, created_at",
        event_type, aggregate_id, json.dumps(payload, default=str), json.dumps(headers),
    )
    return envelope(row)


def envelope(row: dict) -> dict:
    """The message a consumer receives: ids and plain JSON, nothing else."""
    payload = row["payload"]
    headers = row["headers"]
    return {
        "id": str(row["id"]),
        "type": row["event_type"],
        "occurred_at": row["created_at"].isoformat() if isinstance(row["created_at"], datetime) else row["created_at"],
        "payload": json.loads(payload) if isinstance(payload, str) else payload,
        "headers": json.loads(headers) if isinstance(headers, str) else (headers or {}),
    }


async def claim_unpublished(tx, *, limit: int, min_age_seconds: float) -> list[dict]:
    """Lock up to ``limit`` unpublished events older than ``min_age_seconds``.

    Must run inside a transaction: SKIP LOCKED lets several relays sweep at once
    without publishing the same row twice, and only inside a transaction do the
    row locks last until the rows are marked.
    """
    rows = await tx.fetch_all(
        "SELECT id, event_type, payload, headers, created_at FROM {{tables.outbox}} "
        "WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $2) "
        "ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit, min_age_seconds,
    )
    return [envelope(r) for r in rows]


async def mark_published(db_or_tx, ids: list[str]) -> None:
    if ids:
        await db_or_tx.execute(
            "UPDATE {{tables.outbox}} SET published_at = now(), attempts = attempts + 1 "
            "WHERE id = ANY($1::uuid[]) AND published_at IS NULL",
            [uuid.UUID(i) for i in ids],
        )


async def unpublish_since(db, *, seconds: float) -> int:
    """Mark events published in the last ``seconds`` unpublished, for the sweep to send again."""
    return await db.fetch_value(
        "WITH reset AS (UPDATE {{tables.outbox}} SET published_at = NULL "
        "WHERE published_at > now() - make_interval(secs => $1) RETURNING 1) SELECT count(*) FROM reset",
        float(seconds),
    )


async def sweep(db: AsyncDatabaseManager, *, publish, limit: int, min_age_seconds: float) -> int:
    """Publish what the after-commit relay left behind; ``publish(events) -> sent ids`` is sync.

    Claims, publishes and marks in one transaction, so two sweepers never send the
    same row; the send runs in a thread so the loop stays free meanwhile.
    """
    import anyio

    async with db.transaction() as tx:
        events = await claim_unpublished(tx, limit=limit, min_age_seconds=min_age_seconds)
        if not events:
            return 0
        sent = await anyio.to_thread.run_sync(publish, events)
        await mark_published(tx, sent)
        return len(sent)



async def first_delivery(tx, *, event_id: str, consumer: str) -> bool:
    """Record ``event_id`` for ``consumer`` in this schema's inbox; False if already there."""
    inserted = await tx.fetch_value(
        "INSERT INTO {{tables.inbox}} (event_id, consumer) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING true",
        uuid.UUID(event_id), consumer,
    )
    return bool(inserted)



async def backlog(db) -> dict:
    """Unpublished events and the age of the oldest, in seconds (metrics figures)."""
    return await db.fetch_one(
        "SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age "
        "FROM {{tables.outbox}} WHERE published_at IS NULL")
