"""The orders domain's public operations."""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from datetime import datetime

from infra import pagination, runtime
from infra.errors import Unavailable, ValidationFailed
from services.orders import repository
from services.orders.catalog import catalog
from services.orders.errors import OrderNotFound, PipelineOverloaded

SCHEMA = "orders"


def _db():
    return runtime.db().manager(SCHEMA)


def _run(fn, **kwargs):
    return runtime.db().run(fn, _db(), **kwargs)


def _publish(*events) -> None:
    runtime.get().publish(SCHEMA, [e for e in events if e])


def _request_hash(lines: list[dict]) -> str:
    canonical = json.dumps([[str(l["product_id"]), l["quantity"]] for l in lines])
    return hashlib.sha256(canonical.encode()).hexdigest()


def place_order(*, user_id: uuid.UUID, lines: list[dict], idempotency_key: str | None = None) -> tuple[dict, bool]:
    """Price and write a pending order. Returns (order, created).

    A retried request (same Idempotency-Key) meets its order at the insert's unique
    constraint, so the common path reads nothing first. Only when pricing fails is
    the key looked up: a retry answers the order placed earlier even if its products
    have changed since or inventory is down.
    """
    _admit()
    request_hash = _request_hash(lines)
    try:
        priced, currency = _price(lines)
    except (ValidationFailed, Unavailable):
        existing = idempotency_key and _run(repository.find_by_idempotency_key, user_id=user_id, key=idempotency_key)
        if existing:
            return repository.same_request(existing, request_hash), False
        raise
    order, event = _run(
        repository.insert_order, user_id=user_id, lines=priced,
        total_cents=sum(l["unit_price_cents"] * l["quantity"] for l in priced), currency=currency,
        idempotency_key=idempotency_key, request_hash=request_hash,
    )
    _publish(event)
    return order, event is not None


def _price(lines: list[dict]) -> tuple[list[dict], str]:
    """The lines with the catalog's current names and prices, and their one currency.

    Prices come from orders' own read model of the catalog (inventory.product_changed), so
    placing an order asks inventory nothing and works while it is down. A product the read
    model has not heard of yet (its event is on its way, or the read model is new) is looked
    up once from inventory and kept until its events arrive. A stale entry cannot sell what
    is not there: reservation refuses an unknown or inactive product (``product_unavailable``).
    """
    ids = [l["product_id"] for l in lines]
    products = _run(repository.catalog_products, product_ids=ids)
    missing = [i for i in dict.fromkeys(ids) if i not in products]
    if missing:
        looked_up = catalog(runtime.get().settings).products(missing)
        if looked_up:
            _run(repository.remember_products, products=list(looked_up.values()))
            products.update(looked_up)
    errors = {
        f"items.{i}.product_id": ["Unknown or inactive product."]
        for i, line in enumerate(lines) if not (products.get(line["product_id"]) or {}).get("active")
    }
    if errors:
        raise ValidationFailed("the order names unknown or inactive products", errors=errors)
    currencies = {products[l["product_id"]]["currency"] for l in lines}
    if len(currencies) > 1:
        raise ValidationFailed("all items of an order must share one currency",
                               errors={"items": ["Products in different currencies."]})
    priced = [
        {**l, "unit_price_cents": products[l["product_id"]]["price_cents"], "name": products[l["product_id"]]["name"]}
        for l in lines
    ]
    return priced, currencies.pop()


class _Admission:
    """Admission control's view of the backlog, read at most every ``interval`` seconds per process.

    Two measures, both from the orders table: how long the oldest order not yet reserved has
    waited, and how many wait against how many the pipeline decided (reserved, rejected or
    cancelled) in the last half budget, the queue ahead of a new order against the drain
    measured under the current load. Orders this process admitted since its last read count
    as waiting: between two reads a burst of requests would otherwise all be let in.
    """

    interval = 0.25
    # A queue this short is always let in: at light load too few orders are decided to
    # measure a drain (one pending neighbour and nothing decided in the last second is
    # normal), and at any drain this pipeline has it waits a fraction of the budget.
    min_queue = 8

    def __init__(self):
        self.lock = threading.Lock()
        self.read_at = -math.inf
        self.age = 0.0
        self.waiting = 0
        self.decided = 0

    def refusal(self, budget: float) -> float | None:
        """Seconds over half the budget a new order would wait (None: admit it), counting it."""
        with self.lock:
            if time.monotonic() - self.read_at >= self.interval:
                load = _run(repository.pipeline_load, within_seconds=10 * budget, recent_seconds=budget / 2)
                self.age, self.waiting, self.decided = load["age"], load["waiting"], load["decided"]
                self.read_at = time.monotonic()
            half = budget / 2
            if self.age > half:
                return self.age - half
            if self.waiting >= max(self.min_queue, self.decided):
                # Little's law: the queue ahead drains at decided / half, so it waits past half
                # the budget; by how much is its excess at that rate.
                return half * (self.waiting + 1 - max(self.decided, 1)) / max(self.decided, 1)
            self.waiting += 1  # admitted: it waits ahead of the next one until the next read
            return None


_admission = _Admission()


def _admit() -> None:
    """Refuse a new order while the pipeline is over half the latency budget: the oldest
    order not yet reserved has waited that long, or more orders wait than the pipeline
    decided in the last half budget. One placed now would wait as long before its
    reservation, and reservation, fulfilment and mails need the other half.
    ORDER_LATENCY_BUDGET_SECONDS=0 admits everything."""
    budget = runtime.get().settings.order_latency_budget_seconds
    if budget <= 0:
        return
    over = _admission.refusal(budget)
    if over is not None:
        raise PipelineOverloaded("the order pipeline is over its latency budget, retry later",
                                 retry_after=max(1, math.ceil(over)))


def get_order(*, order_id: uuid.UUID, user_id: uuid.UUID, is_admin: bool = False) -> dict:
    order = _run(repository.get_order, order_id=order_id)
    if order is None or (order["user_id"] != user_id and not is_admin):
        raise OrderNotFound("no such order")  # another user's order does not exist for you
    return order


def list_orders(*, user_id: uuid.UUID, limit: int = 20, cursor: str | None = None) -> dict:
    rows = _run(repository.list_orders, user_id=user_id, limit=limit, before=pagination.decode(cursor))
    return pagination.page(rows, limit)


def search_orders(*, limit: int = 20, cursor: str | None = None, status: str | None = None,
                  reason: str | None = None, created_from: datetime | None = None,
                  created_to: datetime | None = None, q: str | None = None) -> dict:
    """Every customer's orders, newest first (admins). ``q`` is an order id or a customer's
    user id, or a customer's email as users' events told it (``remember_customer``)."""
    by_id = by_email = None
    if q is not None:
        try:
            by_id = uuid.UUID(q)
        except ValueError:
            by_email = q
    rows = _run(repository.search_orders, limit=limit, before=pagination.decode(cursor), status=status,
                reason=reason, created_from=created_from, created_to=created_to, order_or_user_id=by_id,
                email=by_email)
    return pagination.page(rows, limit)


def cancel_order(*, order_id: uuid.UUID, user_id: uuid.UUID, is_admin: bool = False) -> dict:
    order, event = _run(repository.cancel, order_id=order_id, user_id=user_id, is_admin=is_admin)
    _publish(event)
    return order


# -- event handlers (called by Celery tasks) -----------------------------------------
def apply_reservation(*, event: dict) -> None:
    payload = event["payload"]
    reserved = event["type"] == "inventory.reserved"
    _publish(*_run(repository.apply_reservation, event_id=event["id"], order_id=uuid.UUID(payload["order_id"]),
                   reserved=reserved, reason=payload.get("reason"),
                   fulfil_now=runtime.get().settings.fulfilment_delay_seconds <= 0))


def fulfil_order(*, event: dict) -> None:
    _publish(_run(repository.fulfil, event_id=event["id"], order_id=uuid.UUID(event["payload"]["order_id"])))


def expire_reservations(*, limit: int = 500) -> int:
    events = _run(repository.expire_reservations, ttl_seconds=runtime.get().settings.reservation_ttl_seconds,
                  limit=limit)
    _publish(*events)
    return len(events)


def track_product(*, event: dict) -> None:
    """inventory.product_changed: keep the read model of the catalog up to date."""
    _run(repository.track_product, product=event["payload"])


def remember_customer(*, event: dict) -> None:
    """user.registered / user.updated: keep the customer's email, which the search finds orders by."""
    profile = event["payload"]
    _run(repository.remember_customer, user_id=uuid.UUID(profile["user_id"]), email=profile["email"],
         updated_at=datetime.fromisoformat(profile["updated_at"]))


def catalog_is_empty() -> bool:
    return not _run(repository.catalog_size)


def settle_stock(*, event: dict) -> None:
    """inventory.committed / inventory.released: the order's stock effect is confirmed."""
    _run(repository.settle_stock, order_id=uuid.UUID(event["payload"]["order_id"]))


def reannounce_stranded(*, limit: int = 500) -> int:
    """Re-announce orders still waiting for inventory past their bound (beat, ``orders.reconcile``)."""
    settings = runtime.get().settings
    events = _run(repository.reannounce_due, after_seconds=settings.order_reannounce_after_seconds,
                  max_seconds=settings.order_reannounce_max_seconds, limit=limit)
    _publish(*events)
    return len(events)
