"""SQL of the inventory schema. Stock changes are conditional updates on locked rows;
the schema's CHECKs are the last line against a negative ``available``."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from infra import messaging, pagination
from services.inventory import events
from services.inventory.errors import InsufficientStock, ProductNotFound, SkuTaken
from services.inventory.schemas import MAX_STOCK  # on_hand is an integer column: stay far below it

PRODUCT = (
    "id, sku, name, description, price_cents, currency, active, on_hand, reserved, "
    "on_hand - reserved AS available, created_at, updated_at, version"
)
# What orders' read model keeps of a product (inventory.product_changed).
CATALOG_FIELDS = ("sku", "name", "price_cents", "currency", "active", "version")


async def _product_changed(tx, product: dict) -> dict:
    payload = {"product_id": str(product["id"]), **{f: product[f] for f in CATALOG_FIELDS}}
    return await messaging.add_event(tx, event_type=events.PRODUCT_CHANGED, aggregate_id=product["id"],
                                     payload=payload)


async def create_product(db, *, sku, name, description, price_cents, currency, stock, actor) -> tuple[dict, dict]:
    try:
        async with db.transaction() as tx:
            product = await tx.fetch_one(
                "INSERT INTO {{tables.products}} (sku, name, description, price_cents, currency, on_hand) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING " + PRODUCT,
                sku, name, description, price_cents, currency, stock,
            )
            if stock:
                await tx.execute(
                    "INSERT INTO {{tables.stock_movements}} (product_id, delta, reason, actor) VALUES ($1, $2, $3, $4)",
                    product["id"], stock, "initial stock", actor,
                )
            return product, await _product_changed(tx, product)
    except asyncpg.UniqueViolationError:
        raise SkuTaken("a product with this sku already exists") from None


async def get_product(db, *, product_id: uuid.UUID) -> dict | None:
    return await db.fetch_one("SELECT " + PRODUCT + " FROM {{tables.products}} WHERE id = $1", product_id)


def _contains(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_products(db, *, limit: int, after: tuple[datetime, uuid.UUID] | None,
                        ids: list[uuid.UUID] | None, active_only: bool, q: str | None = None,
                        in_stock: bool = False) -> list[dict]:
    conditions, args = [], []
    if after:
        args += [after[0], after[1]]
        conditions.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
    if ids is not None:
        args.append(ids)
        conditions.append(f"id = ANY(${len(args)}::uuid[])")
    if active_only:
        conditions.append("active")
    if q:
        args.append(_contains(q))
        conditions.append(f"(name ILIKE ${len(args)} OR sku ILIKE ${len(args)})")
    if in_stock:
        conditions.append("on_hand - reserved > 0")
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    args.append(limit + 1)
    return await db.fetch_all(
        "SELECT " + PRODUCT + " FROM {{tables.products}}" + where
        + f" ORDER BY created_at, id LIMIT ${len(args)}",
        *args,
    )


async def update_product(db, *, product_id: uuid.UUID, changes: dict) -> tuple[dict | None, dict | None]:
    allowed = [c for c in ("name", "description", "price_cents", "active") if c in changes]
    if not allowed:
        return await get_product(db, product_id=product_id), None
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(allowed))
    # The version counts changes orders prices from; a description alone is not one.
    bump = "version + 1" if set(allowed) - {"description"} else "version"
    async with db.transaction() as tx:
        product = await tx.fetch_one(
            "UPDATE {{tables.products}} SET " + sets + f", updated_at = now(), version = {bump} WHERE id = $1 "
            "RETURNING " + PRODUCT,
            product_id, *[changes[c] for c in allowed],
        )
        if product is None or bump == "version":
            return product, None
        return product, await _product_changed(tx, product)


async def announce_catalog(db, *, after: uuid.UUID | None, limit: int) -> tuple[list[dict], uuid.UUID | None]:
    """inventory.product_changed for the next ``limit`` products by id: the snapshot a new
    or emptied read model catches up from. Returns the events and the last id (None: done)."""
    async with db.transaction() as tx:
        products = await tx.fetch_all(
            "SELECT " + PRODUCT + " FROM {{tables.products}} WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
            after, limit,
        )
        emitted = [await _product_changed(tx, product) for product in products]
    return emitted, (products[-1]["id"] if len(products) == limit else None)


async def adjust_stock(db, *, product_id: uuid.UUID, delta: int, reason: str, actor: str) -> dict:
    async with db.transaction() as tx:
        product = await tx.fetch_one(
            "UPDATE {{tables.products}} SET on_hand = on_hand + $2, updated_at = now() "
            "WHERE id = $1 AND on_hand + $2 >= reserved AND on_hand + $2 <= $3 RETURNING " + PRODUCT,
            product_id, delta, MAX_STOCK,
        )
        if product is None:
            exists = await tx.fetch_value("SELECT true FROM {{tables.products}} WHERE id = $1", product_id)
            if not exists:
                raise ProductNotFound("no such product")
            raise InsufficientStock(
                "this change would make available stock negative or on-hand stock exceed "
                f"{MAX_STOCK}"
            )
        await tx.execute(
            "INSERT INTO {{tables.stock_movements}} (product_id, delta, reason, actor) VALUES ($1, $2, $3, $4)",
            product_id, delta, reason, actor,
        )
        return product


async def list_movements(db, *, product_id: uuid.UUID, limit: int, before: tuple | None) -> list[dict] | None:
    """The product's stock movements, newest first; None if there is no such product."""
    args: list = [product_id]
    tail = pagination.newest_first(args, before=before, limit=limit)
    rows = await db.fetch_all(
        "SELECT id, delta, reason, actor, order_id, created_at FROM {{tables.stock_movements}} "
        "WHERE product_id = $1" + tail, *args)
    if not rows and not await db.fetch_value("SELECT true FROM {{tables.products}} WHERE id = $1", product_id):
        return None
    return rows


# -- reservations (run by workers, one transaction per event) ----------------------
async def reserve(db, *, event_id: str, order_id: uuid.UUID, lines: list[dict], ttl_seconds: int) -> dict | None:
    """Hold every line of the order, or none of them. Returns the emitted event (None: nothing to do)."""
    async with db.transaction() as tx:
        await _lock_order(tx, order_id)
        first = await messaging.first_delivery(tx, event_id=event_id, consumer="inventory.reserve")
        if not first or await tx.fetch_value("SELECT true FROM {{tables.reservations}} WHERE order_id = $1",
                                             order_id):
            # Seen before (a redelivery, or orders re-announcing a pending order because our
            # answer was lost): answer again with the outcome we emitted then. A tombstone
            # (cancelled before we got here) has no outcome: the cancellation settles it.
            return await _last_event(tx, order_id, (events.RESERVED, events.REJECTED))
        quantities: dict[uuid.UUID, int] = {}
        for line in lines:
            pid = uuid.UUID(str(line["product_id"]))
            quantities[pid] = quantities.get(pid, 0) + int(line["quantity"])
        product_ids = sorted(quantities)  # one lock order for every order: no deadlocks
        rows = await tx.fetch_all(
            "SELECT id, active, on_hand - reserved AS available FROM {{tables.products}} "
            "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
            product_ids,
        )
        found = {r["id"]: r for r in rows}
        reason = None
        if len(found) != len(product_ids) or not all(r["active"] for r in rows):
            reason = events.PRODUCT_UNAVAILABLE
        elif any(found[pid]["available"] < qty for pid, qty in quantities.items()):
            reason = events.OUT_OF_STOCK
        if reason:
            await tx.execute(
                "INSERT INTO {{tables.reservations}} (order_id, status, reason) VALUES ($1, 'released', $2)",
                order_id, reason,
            )
            return await messaging.add_event(
                tx, event_type=events.REJECTED, aggregate_id=order_id,
                payload={"order_id": str(order_id), "reason": reason},
            )
        updated = await tx.fetch_value(
            "WITH wanted AS (SELECT * FROM unnest($1::uuid[], $2::int[]) AS w(product_id, quantity)), "
            "upd AS (UPDATE {{tables.products}} p SET reserved = p.reserved + w.quantity, updated_at = now() "
            "        FROM wanted w WHERE p.id = w.product_id AND p.on_hand - p.reserved >= w.quantity "
            "        RETURNING p.id) "
            "SELECT count(*) FROM upd",
            product_ids, [quantities[p] for p in product_ids],
        )
        if updated != len(product_ids):  # cannot happen under the row locks; refuse rather than oversell
            raise InsufficientStock("stock changed under a held lock")
        expires_at = await tx.fetch_value(
            "INSERT INTO {{tables.reservations}} (order_id, status, expires_at) "
            "VALUES ($1, 'held', now() + make_interval(secs => $2)) RETURNING expires_at",
            order_id, float(ttl_seconds),
        )
        await tx.execute(
            "INSERT INTO {{tables.reservation_lines}} (order_id, product_id, quantity) "
            "SELECT $1, * FROM unnest($2::uuid[], $3::int[])",
            order_id, product_ids, [quantities[p] for p in product_ids],
        )
        return await messaging.add_event(
            tx, event_type=events.RESERVED, aggregate_id=order_id,
            payload={"order_id": str(order_id), "expires_at": expires_at.isoformat()},
        )


async def _held_lines(tx, order_id: uuid.UUID) -> tuple[list, list] | None:
    """Lock a held reservation and its products (in id order); (product ids, quantities)."""
    status = await tx.fetch_value(
        "SELECT status FROM {{tables.reservations}} WHERE order_id = $1 FOR UPDATE", order_id
    )
    if status != "held":
        return None
    lines = await tx.fetch_all(
        "SELECT l.product_id, l.quantity FROM {{tables.reservation_lines}} l "
        "JOIN {{tables.products}} p ON p.id = l.product_id WHERE l.order_id = $1 ORDER BY l.product_id "
        "FOR UPDATE OF p",
        order_id,
    )
    return [l["product_id"] for l in lines], [l["quantity"] for l in lines]


async def _lock_order(tx, order_id: uuid.UUID) -> None:
    """Reserve and release of one order take turns (until commit): a cancellation's tombstone
    and a reservation never both find no row and both insert one."""
    await tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", str(order_id))


async def _last_event(tx, order_id: uuid.UUID, types: tuple[str, ...]) -> dict | None:
    """The newest event of these types this schema emitted for the order, to announce again."""
    row = await tx.fetch_one(
        "SELECT id, event_type, payload, headers, created_at FROM {{tables.outbox}} "
        "WHERE aggregate_id = $1 AND event_type = ANY($2::text[]) ORDER BY created_at DESC LIMIT 1",
        order_id, list(types),
    )
    return messaging.envelope(row) if row else None


async def commit(db, *, event_id: str, order_id: uuid.UUID) -> dict | None:
    """The order was fulfilled: held stock leaves (on_hand and reserved both go down).

    Returns ``inventory.committed``, which tells orders the stock effect is done; a
    duplicate gets the same confirmation again (the first one may have been lost).
    """
    async with db.transaction() as tx:
        first = await messaging.first_delivery(tx, event_id=event_id, consumer="inventory.commit")
        held = await _held_lines(tx, order_id) if first else None
        if held is None:
            return await _last_event(tx, order_id, (events.COMMITTED,))
        ids, qtys = held
        await tx.execute(
            "UPDATE {{tables.products}} p SET on_hand = p.on_hand - w.q, reserved = p.reserved - w.q, "
            "updated_at = now() FROM unnest($1::uuid[], $2::int[]) AS w(id, q) WHERE p.id = w.id",
            ids, qtys,
        )
        await tx.execute(
            "INSERT INTO {{tables.stock_movements}} (product_id, delta, reason, actor, order_id) "
            "SELECT w.id, -w.q, 'order fulfilled', 'system', $3 FROM unnest($1::uuid[], $2::int[]) AS w(id, q)",
            ids, qtys, order_id,
        )
        await tx.execute(
            "UPDATE {{tables.reservations}} SET status = 'committed', updated_at = now() WHERE order_id = $1",
            order_id,
        )
        return await messaging.add_event(tx, event_type=events.COMMITTED, aggregate_id=order_id,
                                         payload={"order_id": str(order_id)})


async def release(db, *, event_id: str, order_id: uuid.UUID, reason: str) -> dict | None:
    """The order was cancelled: held stock returns; an order not reserved yet gets a tombstone.

    Always answers ``inventory.released``, which tells orders nothing is held for the
    order any more (a duplicate gets the same answer again).
    """
    async with db.transaction() as tx:
        await _lock_order(tx, order_id)
        if not await messaging.first_delivery(tx, event_id=event_id, consumer="inventory.release"):
            return await _last_event(tx, order_id, (events.RELEASED,))
        inserted = await tx.fetch_value(
            "INSERT INTO {{tables.reservations}} (order_id, status, reason) VALUES ($1, 'released', $2) "
            "ON CONFLICT (order_id) DO NOTHING RETURNING true",
            order_id, reason,
        )
        held = None if inserted else await _held_lines(tx, order_id)
        if held is None:
            # Nothing held: a tombstone a late reserve will find, or a reservation that was
            # refused or released already. A committed one cannot be cancelled (orders is
            # the arbiter), so there is nothing to give back either way.
            return (await _last_event(tx, order_id, (events.RELEASED,))) or await messaging.add_event(
                tx, event_type=events.RELEASED, aggregate_id=order_id,
                payload={"order_id": str(order_id), "reason": reason},
            )
        ids, qtys = held
        await tx.execute(
            "UPDATE {{tables.products}} p SET reserved = p.reserved - w.q, updated_at = now() "
            "FROM unnest($1::uuid[], $2::int[]) AS w(id, q) WHERE p.id = w.id",
            ids, qtys,
        )
        await tx.execute(
            "UPDATE {{tables.reservations}} SET status = 'released', reason = $2, updated_at = now() "
            "WHERE order_id = $1",
            order_id, reason,
        )
        return await messaging.add_event(
            tx, event_type=events.RELEASED, aggregate_id=order_id,
            payload={"order_id": str(order_id), "reason": reason},
        )


async def count_reservations(db) -> list[dict]:
    """Reservations by status (a metrics figure)."""
    return await db.fetch_all("SELECT status, count(*) AS n FROM {{tables.reservations}} GROUP BY 1")
