"""SQL of the orders schema. Transitions are conditional updates (``WHERE status =``);
a trigger in the schema refuses illegal ones and records history."""
from __future__ import annotations

import json
import uuid
from datetime import datetime

from infra import messaging, pagination
from services.orders import events
from services.orders.errors import IdempotencyKeyReused, NotCancellable, OrderNotFound

ORDER = (
    "o.id, o.user_id, o.status, o.reason, o.total_cents, o.currency, o.created_at, o.updated_at, "
    "o.request_hash, "
    "(SELECT json_agg(json_build_object('product_id', l.product_id, 'name', l.product_name, 'quantity', l.quantity, "
    "  'unit_price_cents', l.unit_price_cents) ORDER BY l.line_no) "
    " FROM {{tables.order_lines}} l WHERE l.order_id = o.id) AS items, "
    "(SELECT json_agg(json_build_object('status', h.status, 'reason', h.reason, 'at', h.at) ORDER BY h.seq) "
    " FROM {{tables.order_history}} h WHERE h.order_id = o.id) AS history"
)


def _hydrate(row: dict | None) -> dict | None:
    if row is None:
        return None
    order = dict(row)
    order["items"] = json.loads(order["items"] or "[]")
    order["history"] = [
        {**h, "at": datetime.fromisoformat(h["at"])} for h in json.loads(order["history"] or "[]")
    ]
    return order


async def _fetch(conn, order_id: uuid.UUID) -> dict | None:
    return _hydrate(await conn.fetch_one("SELECT " + ORDER + " FROM {{tables.orders}} o WHERE o.id = $1", order_id))


async def find_by_idempotency_key(db, *, user_id: uuid.UUID, key: str) -> dict | None:
    return _hydrate(await db.fetch_one(
        "SELECT " + ORDER + " FROM {{tables.orders}} o WHERE o.user_id = $1 AND o.idempotency_key = $2",
        user_id, key,
    ))


def same_request(order: dict, request_hash: str) -> dict:
    if order["request_hash"] != request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different body",
            errors={"Idempotency-Key": ["Already used with a different request body."]},
        )
    return order


async def insert_order(db, *, user_id: uuid.UUID, lines: list[dict], total_cents: int, currency: str,
                       idempotency_key: str | None, request_hash: str) -> tuple[dict, dict | None]:
    """Write the order, its lines and order.placed in one transaction.

    Returns (order, event); event is None when the Idempotency-Key names an
    existing order (same body), which is returned instead. Concurrent retries of
    one key meet at the unique constraint: the loser waits for the winner's
    commit, inserts nothing, and reads the winner's order.
    """
    async with db.transaction() as tx:
        order_id = await tx.fetch_value(
            "INSERT INTO {{tables.orders}} (user_id, total_cents, currency, idempotency_key, request_hash) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id",
            user_id, total_cents, currency, idempotency_key, request_hash,
        )
        if order_id is None:
            existing = _hydrate(await tx.fetch_one(
                "SELECT " + ORDER + " FROM {{tables.orders}} o WHERE o.user_id = $1 AND o.idempotency_key = $2",
                user_id, idempotency_key,
            ))
            return same_request(existing, request_hash), None
        await tx.execute(
            "INSERT INTO {{tables.order_lines}} (order_id, line_no, product_id, product_name, quantity, "
            "unit_price_cents) SELECT $1, n, p, name, q, c "
            "FROM unnest($2::int[], $3::uuid[], $4::text[], $5::int[], $6::bigint[]) AS t(n, p, name, q, c)",
            order_id, list(range(1, len(lines) + 1)), [l["product_id"] for l in lines],
            [l.get("name", "") for l in lines], [l["quantity"] for l in lines],
            [l["unit_price_cents"] for l in lines],
        )
        event = await messaging.add_event(
            tx, event_type=events.PLACED, aggregate_id=order_id,
            payload={
                "order_id": str(order_id), "user_id": str(user_id),
                "lines": [{"product_id": str(l["product_id"]), "quantity": l["quantity"]} for l in lines],
            },
        )
        return await _fetch(tx, order_id), event


async def get_order(db, *, order_id: uuid.UUID) -> dict | None:
    return await _fetch(db, order_id)


async def list_orders(db, *, user_id: uuid.UUID, limit: int, before: tuple | None) -> list[dict]:
    args: list = [user_id]
    tail = pagination.newest_first(args, before=before, limit=limit, alias="o")
    rows = await db.fetch_all("SELECT " + ORDER + " FROM {{tables.orders}} o WHERE o.user_id = $1" + tail, *args)
    return [_hydrate(r) for r in rows]


async def search_orders(db, *, limit: int, before: tuple | None, status: str | None = None,
                        reason: str | None = None, created_from: datetime | None = None,
                        created_to: datetime | None = None, order_or_user_id: uuid.UUID | None = None,
                        email: str | None = None) -> list[dict]:
    """Every customer's orders, newest first, narrowed by whichever filters are given."""
    conditions, args = [], []

    def where(condition: str, value) -> None:
        args.append(value)
        conditions.append(condition.replace("?", f"${len(args)}"))

    if status is not None:
        where("o.status = ?", status)
    if reason is not None:
        where("o.reason = ?", reason)
    if created_from is not None:
        where("o.created_at >= ?", created_from)
    if created_to is not None:
        where("o.created_at < ?", created_to)
    if order_or_user_id is not None:
        where("(o.id = ? OR o.user_id = ?)", order_or_user_id)
    if email is not None:
        where("o.user_id IN (SELECT c.user_id FROM {{tables.customers}} c WHERE c.email = ?)", email.lower())
    tail = pagination.newest_first(args, before=before, limit=limit, alias="o")
    rows = await db.fetch_all(
        "SELECT " + ORDER + " FROM {{tables.orders}} o WHERE " + (" AND ".join(conditions) or "true") + tail, *args)
    return [_hydrate(r) for r in rows]


async def remember_customer(db, *, user_id: uuid.UUID, email: str, updated_at: datetime) -> None:
    """user.registered / user.updated: the customer's email, the newest profile winning."""
    await db.execute(
        "INSERT INTO {{tables.customers}} (user_id, email, updated_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, updated_at = EXCLUDED.updated_at "
        "WHERE {{tables.customers}}.updated_at < EXCLUDED.updated_at",
        user_id, email.lower(), updated_at,
    )


def _summary(order: dict) -> dict:
    """What consumers of an order event need to know, without reading our tables."""
    return {
        "order_id": str(order["id"]), "user_id": str(order["user_id"]), "status": order["status"],
        "reason": order["reason"], "total_cents": order["total_cents"], "currency": order["currency"],
        "items": [{**i, "product_id": str(i["product_id"])} for i in order["items"]],
    }


async def _move(tx, *, order_id: uuid.UUID, to: str, reason: str | None, from_: tuple[str, ...]) -> bool:
    """The conditional update of a transition (the trigger records it in history)."""
    return bool(await tx.fetch_value(
        "UPDATE {{tables.orders}} SET status = $2, reason = $3, updated_at = now(), "
        "reserved_at = CASE WHEN $2 = 'reserved' THEN now() ELSE reserved_at END, "
        "announced_at = now(), announcements = 0 "
        "WHERE id = $1 AND status = ANY($4::text[]) RETURNING true",
        order_id, to, reason, list(from_),
    ))


async def _transition(tx, *, order_id: uuid.UUID, to: str, reason: str | None, from_: tuple[str, ...],
                      event_type: str, extra: dict | None = None) -> tuple[dict, dict] | None:
    """Move the order and write the event announcing it: the order's summary, plus ``extra``."""
    if not await _move(tx, order_id=order_id, to=to, reason=reason, from_=from_):
        return None
    order = await _fetch(tx, order_id)
    event = await messaging.add_event(tx, event_type=event_type, aggregate_id=order_id,
                                      payload={**_summary(order), **(extra or {})})
    return order, event


async def cancel(db, *, order_id: uuid.UUID, user_id: uuid.UUID, is_admin: bool) -> tuple[dict, dict]:
    async with db.transaction() as tx:
        row = await tx.fetch_one(
            "SELECT user_id, status FROM {{tables.orders}} WHERE id = $1 FOR UPDATE", order_id
        )
        if row is None or (row["user_id"] != user_id and not is_admin):
            raise OrderNotFound("no such order")
        result = await _transition(
            tx, order_id=order_id, to="cancelled", reason="customer", from_=("pending", "reserved"),
            event_type=events.CANCELLED,
        )
        if result is None:
            raise NotCancellable(f"an order that is {row['status']} cannot be cancelled")
        return result


async def apply_reservation(db, *, event_id: str, order_id: uuid.UUID, reserved: bool,
                            reason: str | None, fulfil_now: bool) -> list[dict]:
    """pending -> reserved (order.reserved) or rejected (order.rejected); with no fulfilment
    delay, pending -> reserved -> fulfilled, announced by order.fulfilled alone."""
    async with db.transaction() as tx:
        if not await messaging.first_delivery(tx, event_id=event_id, consumer="orders.apply_reservation"):
            return []
        if reserved and fulfil_now:
            # No delay to wait for: fulfil in the same transaction instead of one more task
            # and transaction. History still shows reserved, then fulfilled, but one outcome is
            # one event (so one mail, not two in the same second): order.fulfilled says it
            # includes the confirmation, and no order.reserved is written, which nothing
            # consumes here but notifications (the delayed orders.fulfil route is off).
            if not await _move(tx, order_id=order_id, to="reserved", reason=None, from_=("pending",)):
                return []
            fulfilled = await _transition(tx, order_id=order_id, to="fulfilled", reason=None, from_=("reserved",),
                                          event_type=events.FULFILLED, extra={events.INCLUDES_CONFIRMATION: True})
            return [fulfilled[1]]
        result = await _transition(
            tx, order_id=order_id, to="reserved" if reserved else "rejected",
            reason=None if reserved else reason, from_=("pending",),
            event_type=events.RESERVED if reserved else events.REJECTED,
        )
        return [result[1]] if result else []


async def fulfil(db, *, event_id: str, order_id: uuid.UUID) -> dict | None:
    async with db.transaction() as tx:
        if not await messaging.first_delivery(tx, event_id=event_id, consumer="orders.fulfil"):
            return None
        result = await _transition(
            tx, order_id=order_id, to="fulfilled", reason=None, from_=("reserved",), event_type=events.FULFILLED
        )
        return result[1] if result else None


async def expire_reservations(db, *, ttl_seconds: int, limit: int) -> list[dict]:
    """Cancel (reason expired) reserved orders not fulfilled within the TTL."""
    emitted = []
    async with db.transaction() as tx:
        ids = await tx.fetch_all(
            "SELECT id FROM {{tables.orders}} WHERE status = 'reserved' "
            "AND reserved_at < now() - make_interval(secs => $1) ORDER BY reserved_at LIMIT $2 "
            "FOR UPDATE SKIP LOCKED",
            float(ttl_seconds), limit,
        )
        for row in ids:
            result = await _transition(
                tx, order_id=row["id"], to="cancelled", reason="expired", from_=("reserved",),
                event_type=events.CANCELLED,
            )
            if result:
                emitted.append(result[1])
    return emitted


# -- reconciliation: nothing stranded by a lost message -------------------------------
# The event an order re-announces in each state that still waits for inventory.
_AWAITED = {"pending": events.PLACED, "fulfilled": events.FULFILLED, "cancelled": events.CANCELLED}


async def reannounce_due(db, *, after_seconds: float, max_seconds: float, limit: int) -> list[dict]:
    """The original events of orders still waiting for inventory past their bound.

    Pending orders wait for a reservation outcome; fulfilled and cancelled ones for
    inventory to confirm the stock effect (``stock_settled_at``). The bound doubles
    with each announcement, up to ``max_seconds``. The same event (same id) goes out
    again, so a consumer that already has it absorbs it in its inbox and answers
    with its own outcome again.
    """
    async with db.transaction() as tx:
        rows = await tx.fetch_all(
            "WITH due AS ("
            "  SELECT id FROM {{tables.orders}} "
            "  WHERE (status = 'pending' OR (status IN ('fulfilled', 'cancelled') AND stock_settled_at IS NULL)) "
            "    AND announced_at < now() - make_interval(secs => $1) "
            "    AND announced_at < now() - make_interval(secs => least($1 * power(2, least(announcements, 20)), $2)) "
            "  ORDER BY announced_at LIMIT $3 FOR UPDATE SKIP LOCKED), "
            "bumped AS ("
            "  UPDATE {{tables.orders}} o SET announced_at = now(), announcements = o.announcements + 1 "
            "  FROM due WHERE o.id = due.id RETURNING o.id, o.status) "
            "SELECT DISTINCT ON (e.aggregate_id) e.id, e.event_type, e.payload, e.headers, e.created_at "
            "FROM bumped b JOIN {{tables.outbox}} e ON e.aggregate_id = b.id "
            "  AND e.event_type = CASE b.status WHEN 'pending' THEN $4 WHEN 'fulfilled' THEN $5 ELSE $6 END "
            "ORDER BY e.aggregate_id, e.created_at DESC",
            float(after_seconds), float(max_seconds), limit,
            _AWAITED["pending"], _AWAITED["fulfilled"], _AWAITED["cancelled"],
        )
    return [messaging.envelope(r) for r in rows]


async def settle_stock(db, *, order_id: uuid.UUID) -> bool:
    """Inventory confirmed the stock effect of a fulfilled or cancelled order."""
    return bool(await db.fetch_value(
        "UPDATE {{tables.orders}} SET stock_settled_at = now() "
        "WHERE id = $1 AND stock_settled_at IS NULL AND status IN ('fulfilled', 'cancelled') RETURNING true",
        order_id,
    ))


async def count_by_status(db) -> list[dict]:
    """Orders by status and reason (a metrics figure)."""
    return await db.fetch_all(
        "SELECT status, coalesce(reason, '') AS reason, count(*) AS n FROM {{tables.orders}} GROUP BY 1, 2")


# -- the read model of inventory's catalog --------------------------------------------
CATALOG = "product_id, sku, name, price_cents, currency, active, version"


async def catalog_products(db, *, product_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """What the read model knows of these products (active or not), by id."""
    rows = await db.fetch_all("SELECT " + CATALOG + " FROM {{tables.catalog}} WHERE product_id = ANY($1::uuid[])",
                              product_ids)
    return {row["product_id"]: row for row in rows}


async def track_product(db, *, product: dict) -> None:
    """inventory.product_changed: keep the newest version, whatever order events arrive in."""
    await db.execute(
        "INSERT INTO {{tables.catalog}} (" + CATALOG + ") VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT (product_id) DO UPDATE SET sku = EXCLUDED.sku, name = EXCLUDED.name, "
        "price_cents = EXCLUDED.price_cents, currency = EXCLUDED.currency, active = EXCLUDED.active, "
        "version = EXCLUDED.version, updated_at = now() WHERE {{tables.catalog}}.version < EXCLUDED.version",
        uuid.UUID(product["product_id"]), product["sku"], product["name"], int(product["price_cents"]),
        product["currency"], bool(product["active"]), int(product["version"]),
    )


async def remember_products(db, *, products: list[dict]) -> None:
    """Products looked up from inventory itself (not heard of yet): version 0, so that any
    event about them, older or newer, replaces what was read."""
    await db.execute(
        "INSERT INTO {{tables.catalog}} (" + CATALOG + ") "
        "SELECT p, s, n, c, cur, a, 0 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], "
        "$6::bool[]) AS t(p, s, n, c, cur, a) ON CONFLICT (product_id) DO NOTHING",
        [uuid.UUID(str(p["id"])) for p in products], [p["sku"] for p in products], [p["name"] for p in products],
        [int(p["price_cents"]) for p in products], [p["currency"] for p in products],
        [bool(p["active"]) for p in products],
    )


async def pipeline_load(db, *, within_seconds: float, recent_seconds: float) -> dict:
    """What admission control reads: ``age``, seconds since the oldest order not yet reserved
    was placed (0 when none waits); ``waiting``, how many are not yet reserved; ``decided``,
    how many left ``pending`` (reserved, rejected or cancelled) in the last ``recent_seconds``.

    Only orders placed in the last ``within_seconds`` count: an older one is stranded (a lost
    message, which reconciliation re-announces), not a backlog that new orders queue behind;
    a real backlog that old has younger orders waiting too, and they count.
    """
    row = await db.fetch_one(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)::float8"
        " AS age, count(*) FILTER (WHERE status = 'pending') AS waiting,"
        " count(*) FILTER (WHERE status <> 'pending'"
        " AND coalesce(reserved_at, updated_at) > now() - make_interval(secs => $2)) AS decided"
        " FROM {{tables.orders}} WHERE created_at > now() - make_interval(secs => $1)",
        float(within_seconds), float(recent_seconds))
    return dict(row)


async def catalog_size(db) -> int:
    return await db.fetch_value("SELECT count(*) FROM {{tables.catalog}}")
