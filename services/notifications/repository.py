"""SQL of the notifications schema."""
from __future__ import annotations

import uuid
from datetime import datetime

from infra import messaging, pagination
from services.notifications.errors import RecipientUnknown

# A sender claims the notifications it is about to send for this long: neither a retry of
# the task nor the redelivery sweep sends them meanwhile. Longer than any send can take
# (SMTP and webhook timeouts are seconds); a sender that died frees them when it passes.
CLAIM_SECONDS = 120.0

NOTIFICATION = ("id, user_id, event_id, channel, template, recipient, subject, body_text, body_html, status, "
                "attempts, last_error, created_at, updated_at, sent_at")


async def remember_recipient(tx, *, profile: dict) -> None:
    """Keep the newest contact details of a user (events may arrive out of order)."""
    await tx.execute(
        "INSERT INTO {{tables.recipients}} (user_id, email, name, phone, updated_at) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name, "
        "phone = EXCLUDED.phone, updated_at = EXCLUDED.updated_at "
        "WHERE {{tables.recipients}}.updated_at <= EXCLUDED.updated_at",
        uuid.UUID(profile["user_id"]), profile["email"], profile["name"], profile.get("phone"),
        datetime.fromisoformat(profile["updated_at"]),
    )


async def update_recipient(db, *, event_id: str, profile: dict) -> None:
    async with db.transaction() as tx:
        if await messaging.first_delivery(tx, event_id=event_id, consumer="notifications.remember"):
            await remember_recipient(tx, profile=profile)


async def prepare(db, *, event: dict, render) -> list[dict]:
    """Create this event's notifications (once) and return those still pending.

    ``render(recipient) -> [row, ...]`` builds the rows to insert for a recipient.
    """
    event_id = uuid.UUID(event["id"])
    async with db.transaction() as tx:
        if await messaging.first_delivery(tx, event_id=event["id"], consumer="notifications.notify"):
            payload = event["payload"]
            if event["type"] == "user.registered":
                await remember_recipient(tx, profile=payload)
            recipient = await tx.fetch_one(
                "SELECT user_id, email, name, phone FROM {{tables.recipients}} WHERE user_id = $1",
                uuid.UUID(payload["user_id"]),
            )
            if recipient is None:
                raise RecipientUnknown("the user of this event is not known yet")
            for row in render(recipient):
                await tx.execute(
                    "INSERT INTO {{tables.notifications}} (user_id, event_id, channel, template, recipient, "
                    "subject, body_text, body_html) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "ON CONFLICT (event_id, channel, recipient) DO NOTHING",
                    recipient["user_id"], event_id, row["channel"], row["template"], row["recipient"],
                    row["subject"], row["body_text"], row["body_html"],
                )
        return await tx.fetch_all(
            "UPDATE {{tables.notifications}} SET claimed_until = now() + make_interval(secs => $2) "
            "WHERE event_id = $1 AND status = 'pending' AND (claimed_until IS NULL OR claimed_until < now()) "
            "RETURNING " + NOTIFICATION,
            event_id, CLAIM_SECONDS,
        )


async def claim_stale(db, *, older_than_seconds: float, limit: int) -> list[dict]:
    """Pending notifications nobody has tried for a while (their retry message was lost), claimed."""
    return await db.fetch_all(
        "UPDATE {{tables.notifications}} SET claimed_until = now() + make_interval(secs => $3) "
        "WHERE id IN (SELECT id FROM {{tables.notifications}} WHERE status = 'pending' "
        "  AND updated_at < now() - make_interval(secs => $1) "
        "  AND (claimed_until IS NULL OR claimed_until < now()) "
        "  ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
        "RETURNING " + NOTIFICATION,
        float(older_than_seconds), limit, CLAIM_SECONDS,
    )


async def record(db, *, outcomes: list[tuple[uuid.UUID, str, str | None]]) -> None:
    """Store each delivery attempt: (notification id, 'sent' | 'retry' | 'failed', error)."""
    async with db.transaction() as tx:
        for notification_id, outcome, error in outcomes:
            attempt = await tx.fetch_value(
                "UPDATE {{tables.notifications}} SET attempts = attempts + 1, last_error = $3, updated_at = now(), "
                "claimed_until = NULL, "
                "status = CASE $2 WHEN 'retry' THEN 'pending' ELSE $2 END, "
                "sent_at = CASE $2 WHEN 'sent' THEN now() ELSE sent_at END "
                "WHERE id = $1 AND status = 'pending' RETURNING attempts",
                notification_id, outcome, error,
            )
            if attempt is not None:
                await tx.execute(
                    "INSERT INTO {{tables.delivery_attempts}} (notification_id, attempt, outcome, error) "
                    "VALUES ($1, $2, $3, $4)",
                    notification_id, attempt, outcome, error,
                )


async def list_for_user(db, *, user_id: uuid.UUID, limit: int, before) -> list[dict]:
    args: list = [user_id]
    tail = pagination.newest_first(args, before=before, limit=limit)
    return await db.fetch_all(
        "SELECT " + NOTIFICATION + " FROM {{tables.notifications}} WHERE user_id = $1" + tail, *args
    )



async def count_by_channel(db) -> list[dict]:
    """Notifications by channel and status (a metrics figure)."""
    return await db.fetch_all("SELECT channel, status, count(*) AS n FROM {{tables.notifications}} GROUP BY 1, 2")
