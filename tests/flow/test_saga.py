"""The order saga's races: cancel against reservation, expiry against fulfilment, duplicate
deliveries, concurrent sweeps and reconciliation, each ending in one state and conserved stock.

Most tests drive the service functions in the order a race could deliver their events, with
the process's publisher swapped for a collector (``collected``), so no worker acts on them.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.conftest import Live, Worker
from tests.support import Api, assert_conserved, create_product, place, product_locked, stock_ledger, wait_for


# -- helpers ------------------------------------------------------------------------
def _mark_published(rt, schema: str, events: list[dict]) -> list[dict]:
    """As the relay would once it sent them: no sweep hands these events to a worker."""
    from infra import messaging

    rt.db.run(messaging.mark_published, rt.db.manager(schema), [e["id"] for e in events if e])
    return events


@pytest.fixture
def collected(rt):
    """What the services publish while the test runs, in order; published nowhere else."""
    from infra import runtime

    events: list[dict] = []

    def collect(schema, batch):
        events.extend(batch)
        _mark_published(rt, schema, batch)

    previous = runtime._publisher
    runtime.set_publisher(collect)
    try:
        yield events
    finally:
        runtime.set_publisher(previous)


def _for(events: list[dict], order_id, event_type: str | None = None) -> list[dict]:
    return [e for e in events if e["payload"].get("order_id") == str(order_id)
            and (event_type is None or e["type"] == event_type)]


def _outbox(rt, schema: str, order_id) -> list[str]:
    """The event types ``schema`` wrote for the order, oldest first."""
    rows = rt.db.run(lambda db: db.fetch_all(
        "SELECT event_type FROM {{tables.outbox}} WHERE aggregate_id = $1 ORDER BY created_at, event_type",
        uuid.UUID(str(order_id))), rt.db.manager(schema))
    return [r["event_type"] for r in rows]


def _order(rt, order_id) -> dict:
    from services.orders import repository

    order = rt.db.run(lambda db: db.fetch_one(
        "SELECT status, reason, announcements, stock_settled_at FROM {{tables.orders}} WHERE id = $1",
        uuid.UUID(str(order_id))), rt.db.manager("orders"))
    full = rt.db.run(repository.get_order, rt.db.manager("orders"), order_id=uuid.UUID(str(order_id)))
    return {**order, "history": [(h["status"], h["reason"]) for h in full["history"]]}


def _stock(rt, product_id) -> tuple[int, int]:
    s = stock_ledger(rt, [str(product_id)])[str(product_id)]
    return s["on_hand"], s["reserved"]


def _product(stock: int) -> uuid.UUID:
    from services.inventory import service as inventory

    return inventory.create_product(sku=f"SKU-{uuid.uuid4().hex[:10]}", name="Widget", price_cents=1000,
                                    actor="test", stock=stock)["id"]


def _pending_order(rt, product_id, quantity: int) -> tuple[dict, dict]:
    """A pending order written as the orders service writes it; (order, its order.placed)."""
    from services.orders import repository

    order, placed = rt.db.run(
        repository.insert_order, rt.db.manager("orders"), user_id=uuid.uuid4(),
        lines=[{"product_id": uuid.UUID(str(product_id)), "quantity": quantity, "name": "Widget",
                "unit_price_cents": 1000}],
        total_cents=1000 * quantity, currency="USD", idempotency_key=None, request_hash="test",
    )
    _mark_published(rt, "orders", [placed])
    return order, placed


def _reserved_order(rt, collected, product_id, quantity: int) -> tuple[dict, dict]:
    """An order held by inventory and ``reserved`` at orders, not fulfilled; (order, order.reserved)."""
    from services.inventory import service as inventory
    from services.orders import repository

    order, placed = _pending_order(rt, product_id, quantity)
    inventory.reserve_order(event=placed)
    [answer] = _for(collected, order["id"], "inventory.reserved")
    [reserved] = _mark_published(rt, "orders", rt.db.run(
        repository.apply_reservation, rt.db.manager("orders"), event_id=answer["id"], order_id=order["id"],
        reserved=True, reason=None, fulfil_now=False))
    assert reserved["type"] == "order.reserved"
    assert _order(rt, order["id"])["status"] == "reserved"
    return order, reserved


def _expire_all_reserved(rt, order_id) -> list[dict]:
    """Expire every reserved order of the session database now; this order's events (the
    others' wait for the sweep, as they would after the beat's expiry)."""
    from services.orders import repository

    events = rt.db.run(repository.expire_reservations, rt.db.manager("orders"), ttl_seconds=0, limit=10_000)
    return _mark_published(rt, "orders", _for(events, order_id))


# -- cancelling a reserved order ----------------------------------------------------
def test_cancelling_a_reserved_order_releases_exactly_its_units_and_announces_it_once(
        rt, stack_env, gateway, admin, customer, own_broker):
    product = create_product(gateway, admin, stock=5)
    env = {**stack_env, "CELERY_BROKER_URL": own_broker, "FULFILMENT_DELAY_SECONDS": "60"}
    orders = Live("orders", env, WEB_CONCURRENCY="1")
    worker = None
    try:
        worker = Worker(env, concurrency=1)
        api = Api(orders.url)
        order = place(api, customer, [(product["id"], 2)])
        wait_for(lambda: api.ok("GET", f"/api/orders/{order['id']}", token=customer)["status"] == "reserved",
                 timeout=30, what="the order to be reserved")
        assert _stock(rt, product["id"]) == (5, 2)

        status, _, cancelled = api.call("POST", f"/api/orders/{order['id']}/cancel", token=customer)
        assert status == 200, cancelled
        assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "customer")
        assert [(h["status"], h["reason"]) for h in cancelled["history"]] == [
            ("pending", None), ("reserved", None), ("cancelled", "customer")]

        wait_for(lambda: _stock(rt, product["id"]) == (5, 0), timeout=30, what="the units to come back")
        wait_for(lambda: _order(rt, order["id"])["stock_settled_at"] is not None, timeout=30,
                 what="orders to hear the stock was released")
        assert _outbox(rt, "orders", order["id"]).count("order.cancelled") == 1
        assert _outbox(rt, "inventory", order["id"]) == ["inventory.reserved", "inventory.released"]

        again = api.call("POST", f"/api/orders/{order['id']}/cancel", token=customer)
        assert again[0] == 409, again
        assert _outbox(rt, "orders", order["id"]).count("order.cancelled") == 1
        assert _order(rt, order["id"])["status"] == "cancelled"
        assert_conserved(rt, [product["id"]])
    finally:
        if worker:
            worker.stop()
        orders.stop()


# -- a cancel racing the reservation --------------------------------------------------
def test_a_cancel_that_reaches_inventory_before_the_order_holds_nothing(rt, collected):
    from services.inventory import service as inventory
    from services.orders import service as orders

    product = _product(stock=5)
    order, placed = _pending_order(rt, product, 2)
    orders.cancel_order(order_id=order["id"], user_id=order["user_id"])
    [cancelled] = _for(collected, order["id"], "order.cancelled")

    inventory.release_order(event=cancelled)  # the cancel overtakes order.placed
    inventory.reserve_order(event=placed)

    assert _stock(rt, product) == (5, 0)
    assert _outbox(rt, "inventory", order["id"]) == ["inventory.released"]
    assert [e["type"] for e in _for(collected, order["id"])] == ["order.cancelled", "inventory.released"]
    state = _order(rt, order["id"])
    assert state["history"] == [("pending", None), ("cancelled", "customer")]
    assert_conserved(rt, [str(product)])


def test_a_reservation_that_reaches_a_cancelled_order_late_is_released_and_ignored(rt, collected):
    from services.inventory import service as inventory
    from services.orders import service as orders

    product = _product(stock=5)
    order, placed = _pending_order(rt, product, 2)
    inventory.reserve_order(event=placed)
    [reserved] = _for(collected, order["id"], "inventory.reserved")
    assert _stock(rt, product) == (5, 2)

    orders.cancel_order(order_id=order["id"], user_id=order["user_id"])  # before the answer arrives
    [cancelled] = _for(collected, order["id"], "order.cancelled")
    inventory.release_order(event=cancelled)
    assert _stock(rt, product) == (5, 0)
    orders.apply_reservation(event=reserved)  # late

    state = _order(rt, order["id"])
    assert (state["status"], state["reason"]) == ("cancelled", "customer")
    assert state["history"] == [("pending", None), ("cancelled", "customer")]
    assert _outbox(rt, "orders", order["id"]) == ["order.placed", "order.cancelled"]
    assert _outbox(rt, "inventory", order["id"]) == ["inventory.reserved", "inventory.released"]
    assert _stock(rt, product) == (5, 0)
    assert_conserved(rt, [str(product)])


def test_a_cancel_that_lands_while_the_reservation_is_being_made_leaves_nothing_held_and_no_error(
        rt, collected, database_url):
    from services.inventory import service as inventory
    from services.orders import service as orders

    product = _product(stock=5)
    order, placed = _pending_order(rt, product, 2)
    orders.cancel_order(order_id=order["id"], user_id=order["user_id"])
    [cancelled] = _for(collected, order["id"], "order.cancelled")
    failures = []

    def deliver(handler, event):
        def run():
            try:
                handler(event=event)
            except Exception as exc:  # what a worker would dead-letter
                failures.append(exc)
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # The reservation waits at its product's row lock, past its tombstone check and in its
    # transaction, while the cancellation reaches inventory on another connection. (Within
    # this process's lock_timeout, DB_LOCK_TIMEOUT_MS: the waits below take a moment.)
    with product_locked(database_url, product) as waiting:
        reserving = deliver(inventory.reserve_order, placed)
        [(reserver, name)] = wait_for(waiting, timeout=10, what="the reservation to wait at its row lock")
        assert name == rt.db.application_name
        releasing = deliver(inventory.release_order, cancelled)
        # The release commits, or waits for the reservation to commit.
        wait_for(lambda: not releasing.is_alive() or waiting(reserver), timeout=10, what="the release to land")
    reserving.join(30)
    releasing.join(30)

    assert failures == [], repr(failures)
    assert _stock(rt, product) == (5, 0)
    # Either the cancel's tombstone came first (nothing reserved), or the reservation did and
    # the cancel released it: one release either way.
    assert _outbox(rt, "inventory", order["id"]) in (["inventory.released"],
                                                     ["inventory.reserved", "inventory.released"])
    assert_conserved(rt, [str(product)])


# -- expiry racing fulfilment ---------------------------------------------------------
def test_an_order_expired_before_its_fulfilment_stays_cancelled_and_gets_its_stock_back(rt, collected):
    from services.inventory import service as inventory
    from services.orders import service as orders

    product = _product(stock=5)
    order, reserved = _reserved_order(rt, collected, product, 2)
    [cancelled] = _expire_all_reserved(rt, order["id"])
    assert cancelled["type"] == "order.cancelled" and cancelled["payload"]["reason"] == "expired"

    orders.fulfil_order(event=reserved)  # the delayed fulfilment, after the expiry

    state = _order(rt, order["id"])
    assert (state["status"], state["reason"]) == ("cancelled", "expired")
    assert state["history"] == [("pending", None), ("reserved", None), ("cancelled", "expired")]
    assert "order.fulfilled" not in _outbox(rt, "orders", order["id"])
    assert _for(collected, order["id"], "order.fulfilled") == []
    inventory.release_order(event=cancelled)
    assert _stock(rt, product) == (5, 0)
    assert_conserved(rt, [str(product)])


def test_an_order_fulfilled_before_its_expiry_stays_fulfilled_and_its_stock_leaves(rt, collected):
    from services.inventory import service as inventory
    from services.orders import service as orders

    product = _product(stock=5)
    order, reserved = _reserved_order(rt, collected, product, 2)
    orders.fulfil_order(event=reserved)
    [fulfilled] = _for(collected, order["id"], "order.fulfilled")

    assert _expire_all_reserved(rt, order["id"]) == []

    state = _order(rt, order["id"])
    assert (state["status"], state["reason"]) == ("fulfilled", None)
    assert state["history"] == [("pending", None), ("reserved", None), ("fulfilled", None)]
    assert "order.cancelled" not in _outbox(rt, "orders", order["id"])
    inventory.commit_order(event=fulfilled)
    assert _stock(rt, product) == (3, 0)
    assert_conserved(rt, [str(product)])


# -- concurrent sweeps ------------------------------------------------------------------
def test_two_concurrent_outbox_sweeps_publish_each_row_once(rt):
    from infra import messaging
    from workers import relay

    db = rt.db.manager("inventory")

    async def insert(db):
        async with db.transaction() as tx:
            return [(await messaging.add_event(tx, event_type="test.swept", aggregate_id=uuid.uuid4(),
                                               payload={"n": n}))["id"] for n in range(50)]

    mine = set(rt.db.run(insert, db))
    published: dict[str, list[str]] = {"a": [], "b": []}

    def publisher(name):
        def publish(events):
            ours = [e["id"] for e in events if e["id"] in mine]
            published[name].extend(ours)
            time.sleep(0.02)  # hold the claimed rows a while: the other sweep runs meanwhile
            # Rows of other tests waiting for the sweep go where the beat's sweep would send them.
            others = [e for e in events if e["id"] not in mine]
            return ours + (relay.send_events(others, retry=True) if others else [])
        return publish

    async def sweep_until_done(db, publish):
        while await messaging.sweep(db, publish=publish, limit=5, min_age_seconds=0):
            pass

    async def race(db):
        await asyncio.gather(sweep_until_done(db, publisher("a")), sweep_until_done(db, publisher("b")))

    rt.db.run(race, db, timeout=60)

    ours = published["a"] + published["b"]
    twice = [i for i, n in Counter(ours).items() if n > 1]
    assert twice == [], twice
    assert published["a"] and published["b"], "both sweeps should have claimed rows"
    unpublished = rt.db.run(lambda db: db.fetch_value(
        "SELECT count(*) FROM {{tables.outbox}} WHERE id = ANY($1::uuid[]) AND published_at IS NULL",
        [uuid.UUID(i) for i in mine]), db)
    assert unpublished == 0
    # Another sweeper (the session's beat) may have taken some of them: it marked them, so
    # together every one of the 50 went out, and ours sent none of its rows again.
    assert set(ours) <= mine


# -- duplicate deliveries ---------------------------------------------------------------
def test_a_duplicate_delivery_to_inventory_answers_again_with_the_same_event(rt, collected):
    from services.inventory import service as inventory
    from services.orders import repository

    product = _product(stock=5)
    order, placed = _pending_order(rt, product, 2)
    inventory.reserve_order(event=placed)
    inventory.reserve_order(event=placed)
    first, second = _for(collected, order["id"], "inventory.reserved")
    assert (second["id"], second["type"], second["payload"]) == (first["id"], first["type"], first["payload"])
    assert _outbox(rt, "inventory", order["id"]) == ["inventory.reserved"]
    assert _stock(rt, product) == (5, 2)

    emitted = _mark_published(rt, "orders", rt.db.run(
        repository.apply_reservation, rt.db.manager("orders"), event_id=first["id"], order_id=order["id"],
        reserved=True, reason=None, fulfil_now=True))
    [fulfilled] = [e for e in emitted if e["type"] == "order.fulfilled"]
    inventory.commit_order(event=fulfilled)
    inventory.commit_order(event=fulfilled)
    first, second = _for(collected, order["id"], "inventory.committed")
    assert (second["id"], second["type"], second["payload"]) == (first["id"], first["type"], first["payload"])
    assert _outbox(rt, "inventory", order["id"]) == ["inventory.reserved", "inventory.committed"]
    assert _stock(rt, product) == (3, 0)
    assert_conserved(rt, [str(product)])


# -- reconciliation ---------------------------------------------------------------------
def _announced_long_ago(rt, order_id) -> None:
    rt.db.run(lambda db: db.execute(
        "UPDATE {{tables.orders}} SET announced_at = now() - interval '1 hour' WHERE id = $1",
        uuid.UUID(str(order_id))), rt.db.manager("orders"))


def test_a_stranded_pending_order_is_announced_again_with_its_original_event_once_per_bound(rt, collected):
    from services.orders import service as orders

    order, placed = _pending_order(rt, uuid.uuid4(), 1)
    assert _order(rt, order["id"])["announcements"] == 0
    _announced_long_ago(rt, order["id"])

    orders.reannounce_stranded()
    assert [(e["id"], e["type"]) for e in _for(collected, order["id"])] == [(placed["id"], "order.placed")]
    assert _order(rt, order["id"])["announcements"] == 1

    collected.clear()
    orders.reannounce_stranded()
    assert _for(collected, order["id"]) == []
    assert _order(rt, order["id"])["announcements"] == 1
    assert _outbox(rt, "orders", order["id"]) == ["order.placed"]


@pytest.mark.parametrize("outcome", ["fulfilled", "cancelled"])
def test_an_order_whose_stock_effect_is_unconfirmed_is_announced_again_until_settled(rt, collected, outcome):
    from services.orders import repository
    from services.orders import service as orders

    order, _ = _pending_order(rt, uuid.uuid4(), 1)
    if outcome == "fulfilled":
        emitted = rt.db.run(repository.apply_reservation, rt.db.manager("orders"), event_id=str(uuid.uuid4()),
                            order_id=order["id"], reserved=True, reason=None, fulfil_now=True)
        _mark_published(rt, "orders", emitted)
    else:
        orders.cancel_order(order_id=order["id"], user_id=order["user_id"])
        emitted = list(collected)
    [announced] = [e for e in emitted if e["type"] == f"order.{outcome}"]
    assert _order(rt, order["id"])["stock_settled_at"] is None
    _announced_long_ago(rt, order["id"])

    collected.clear()
    orders.reannounce_stranded()
    assert [(e["id"], e["type"]) for e in _for(collected, order["id"])] == [(announced["id"], f"order.{outcome}")]

    answer = "inventory.committed" if outcome == "fulfilled" else "inventory.released"
    orders.settle_stock(event={"id": str(uuid.uuid4()), "type": answer, "payload": {"order_id": str(order["id"])}})
    assert _order(rt, order["id"])["stock_settled_at"] is not None
    _announced_long_ago(rt, order["id"])
    collected.clear()
    orders.reannounce_stranded()
    assert _for(collected, order["id"]) == []
    assert _order(rt, order["id"])["status"] == outcome
