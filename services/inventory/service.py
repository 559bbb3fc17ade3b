"""The inventory domain's public operations."""
from __future__ import annotations

import uuid

from infra import pagination, runtime
from services.inventory import repository
from services.inventory.errors import ProductNotFound

SCHEMA = "inventory"


def _db():
    return runtime.db().manager(SCHEMA)


def _run(fn, **kwargs):
    return runtime.db().run(fn, _db(), **kwargs)


def _publish(event: dict | None) -> None:
    if event:
        runtime.get().publish(SCHEMA, [event])


def create_product(*, sku: str, name: str, price_cents: int, actor: str, description: str = "",
                   currency: str = "USD", stock: int = 0) -> dict:
    product, event = _run(repository.create_product, sku=sku, name=name, description=description,
                          price_cents=price_cents, currency=currency, stock=stock, actor=actor)
    _publish(event)
    return product


def get_product(*, product_id: uuid.UUID) -> dict:
    product = _run(repository.get_product, product_id=product_id)
    if product is None:
        raise ProductNotFound("no such product")
    return product


def list_products(*, limit: int = 20, cursor: str | None = None, ids: list[uuid.UUID] | None = None,
                  active_only: bool = True, q: str | None = None, in_stock: bool = False) -> dict:
    """Active products, oldest first; ``q`` finds a text in the name or sku, ``in_stock``
    keeps those with stock available."""
    rows = _run(repository.list_products, limit=limit, after=pagination.decode(cursor), ids=ids,
                active_only=active_only, q=q, in_stock=in_stock)
    return pagination.page(rows, limit)


def update_product(*, product_id: uuid.UUID, changes: dict) -> dict:
    product, event = _run(repository.update_product, product_id=product_id, changes=changes)
    if product is None:
        raise ProductNotFound("no such product")
    _publish(event)
    return product


def announce_catalog(*, batch: int = 500) -> int:
    """Announce every product again (inventory.product_changed), so that a new or emptied
    read model of the catalog (orders') catches up; returns how many were announced."""
    total, after = 0, None
    while True:
        emitted, after = _run(repository.announce_catalog, after=after, limit=batch)
        runtime.get().publish(SCHEMA, emitted)
        total += len(emitted)
        if after is None:
            return total


def adjust_stock(*, product_id: uuid.UUID, delta: int, reason: str, actor: str) -> dict:
    return _run(repository.adjust_stock, product_id=product_id, delta=delta, reason=reason, actor=actor)


def list_movements(*, product_id: uuid.UUID, limit: int = 20, cursor: str | None = None) -> dict:
    """The product's stock ledger, newest first (admins)."""
    rows = _run(repository.list_movements, product_id=product_id, limit=limit,
                before=pagination.decode(cursor, id_type=pagination.bigint))
    if rows is None:
        raise ProductNotFound("no such product")
    return pagination.page(rows, limit)


# -- event handlers (called by Celery tasks) -----------------------------------------
def reserve_order(*, event: dict) -> None:
    payload = event["payload"]
    _publish(_run(
        repository.reserve, event_id=event["id"], order_id=uuid.UUID(payload["order_id"]),
        lines=payload["lines"], ttl_seconds=runtime.get().settings.reservation_ttl_seconds,
    ))


def commit_order(*, event: dict) -> None:
    _publish(_run(repository.commit, event_id=event["id"], order_id=uuid.UUID(event["payload"]["order_id"])))


def release_order(*, event: dict) -> None:
    payload = event["payload"]
    _publish(_run(repository.release, event_id=event["id"], order_id=uuid.UUID(payload["order_id"]),
                  reason=payload.get("reason") or "cancelled"))
