"""The order flow end to end: gateway -> orders -> outbox -> Celery -> inventory -> orders."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.support import (
    Api,
    assert_conserved,
    create_product,
    place,
    register,
    stock_ledger,
    wait_for,
    wait_terminal,
)


@pytest.fixture(scope="module")
def api(live_gateway, live_worker):
    return Api(live_gateway.url)


def test_an_order_is_reserved_then_fulfilled_and_stock_leaves(api, admin, customer):
    product = create_product(api, admin, stock=5, price_cents=700)
    order = place(api, customer, [(product["id"], 2)])
    assert order["status"] == "pending" and order["total_cents"] == 1400
    done = wait_terminal(api, customer, order["id"])
    assert done["status"] == "fulfilled" and done["reason"] is None
    assert [h["status"] for h in done["history"]] == ["pending", "reserved", "fulfilled"]
    after = wait_for(lambda: (p := api.ok("GET", f"/api/inventory/products/{product['id']}"))["reserved"] == 0 and p)
    assert after["on_hand"] == 3 and after["available"] == 3


def _events_of(rt, order_id: str) -> dict[str, list[dict]]:
    """The events orders and inventory wrote for the order, oldest first, by schema."""
    async def read(db):
        return await db.fetch_all("SELECT id, event_type, payload FROM {{tables.outbox}} WHERE aggregate_id = $1 "
                                  "ORDER BY created_at, event_type", uuid.UUID(order_id))

    return {schema: [{**r, "payload": json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"]}
                     for r in rt.db.run(read, rt.db.manager(schema))] for schema in ("orders", "inventory")}


def _consumed(rt, event_ids: list) -> Counter:
    """The tasks that consumed these events (inbox rows, as the bench counts hops), by consumer."""
    async def read(db):
        return await db.fetch_all("SELECT consumer FROM {{tables.inbox}} WHERE event_id = ANY($1::uuid[])",
                                  event_ids)

    return Counter(r["consumer"] for schema in ("orders", "inventory", "notifications")
                   for r in rt.db.run(read, rt.db.manager(schema)))


def test_an_order_reserved_and_fulfilled_in_one_step_announces_the_outcome_once(api, admin, customer, rt):
    """No fulfilment delay: reservation and fulfilment are one transaction, so order.fulfilled alone
    announces both (``includes_confirmation``), and the history still shows each step."""
    product = create_product(api, admin, stock=5)
    order = place(api, customer, [(product["id"], 1)])
    done = wait_terminal(api, customer, order["id"])
    assert [h["status"] for h in done["history"]] == ["pending", "reserved", "fulfilled"]
    events = wait_for(lambda: (e := _events_of(rt, order["id"]))["inventory"][-1:]
                      and e["inventory"][-1]["event_type"] == "inventory.committed" and e, what="the commit")
    assert [e["event_type"] for e in events["orders"]] == ["order.placed", "order.fulfilled"]
    fulfilled = events["orders"][-1]["payload"]
    assert (fulfilled["status"], fulfilled["includes_confirmation"]) == ("fulfilled", True)

    ids = [e["id"] for schema in events.values() for e in schema]
    hops = wait_for(lambda: (c := _consumed(rt, ids))["notifications.notify"] and c["inventory.commit"] and c,
                    what="the fulfilment's consumers")
    time.sleep(0.5)  # a task of an event we did not expect would have run by now
    assert _consumed(rt, ids) == hops == Counter({"inventory.reserve": 1, "orders.apply_reservation": 1,
                                                  "inventory.commit": 1, "notifications.notify": 1})


def test_an_order_beyond_stock_is_rejected_out_of_stock(api, admin, customer, rt):
    product = create_product(api, admin, stock=1)
    order = place(api, customer, [(product["id"], 2)])
    done = wait_terminal(api, customer, order["id"])
    assert (done["status"], done["reason"]) == ("rejected", "out_of_stock")
    assert_conserved(rt, [product["id"]])


def test_a_multi_line_order_is_reserved_whole_or_not_at_all(api, admin, customer, rt):
    plenty, scarce = create_product(api, admin, stock=10), create_product(api, admin, stock=1)
    order = place(api, customer, [(plenty["id"], 3), (scarce["id"], 2)])
    assert wait_terminal(api, customer, order["id"])["status"] == "rejected"
    assert api.ok("GET", f"/api/inventory/products/{plenty['id']}")["on_hand"] == 10
    assert_conserved(rt, [plenty["id"], scarce["id"]])


def test_cancelling_releases_the_stock_and_a_fulfilled_order_cannot_be_cancelled(api, admin, customer, rt):
    product = create_product(api, admin, stock=3)
    order = place(api, customer, [(product["id"], 1)])
    done = wait_terminal(api, customer, order["id"])
    status, _, problem = api.call("POST", f"/api/orders/{order['id']}/cancel", token=customer)
    assert done["status"] == "fulfilled" and status == 409 and problem["status"] == 409
    assert_conserved(rt, [product["id"]])


def test_200_concurrent_orders_for_50_units_never_oversell(api, admin, rt):
    product = create_product(api, admin, stock=50)
    customers = [register(api)["access_token"] for _ in range(20)]
    placed: list[tuple[str, str]] = []
    failures: Counter = Counter()
    lock = threading.Lock()

    def buyer(n):
        token = customers[n % len(customers)]
        status, _, body = api.call("POST", "/api/orders", token=token,
                                   json_body={"items": [{"product_id": product["id"], "quantity": 1}]})
        with lock:
            if status == 202:
                placed.append((token, body["id"]))
            else:
                failures[status] += 1

    threads = [threading.Thread(target=buyer, args=(n,)) for n in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(placed) == 200, failures
    outcomes = Counter(wait_terminal(api, token, oid, timeout=120)["status"] for token, oid in placed)
    assert outcomes == {"fulfilled": 50, "rejected": 150}
    final = wait_for(lambda: (s := stock_ledger(rt, [product["id"]])[product["id"]])["reserved"] == 0 and s)
    assert final["on_hand"] == 0
    assert_conserved(rt, [product["id"]])


def test_multi_line_orders_locking_in_opposite_order_both_finish(api, admin, customer, rt):
    a, b = create_product(api, admin, stock=100), create_product(api, admin, stock=100)
    orders = []
    for _ in range(10):
        orders.append(place(api, customer, [(a["id"], 1), (b["id"], 1)]))
        orders.append(place(api, customer, [(b["id"], 1), (a["id"], 1)]))
    assert {wait_terminal(api, customer, o["id"])["status"] for o in orders} == {"fulfilled"}
    assert_conserved(rt, [a["id"], b["id"]])


def test_idempotent_placement_returns_the_same_order(api, admin, customer):
    product = create_product(api, admin, stock=10)
    key = uuid.uuid4().hex
    first = place(api, customer, [(product["id"], 1)], key=key)
    again = place(api, customer, [(product["id"], 1)], key=key, expected=(200, 202))
    assert again["id"] == first["id"]
    status, _, problem = api.call("POST", "/api/orders", token=customer, headers={"Idempotency-Key": key},
                                  json_body={"items": [{"product_id": product["id"], "quantity": 2}]})
    assert status == 422 and "Idempotency-Key" in problem["errors"]


def test_concurrent_retries_of_one_idempotency_key_create_one_order(api, admin, customer):
    product = create_product(api, admin, stock=10)
    key = uuid.uuid4().hex
    ids, lock = [], threading.Lock()

    def retry():
        order = place(api, customer, [(product["id"], 1)], key=key, expected=(200, 202))
        with lock:
            ids.append(order["id"])

    threads = [threading.Thread(target=retry) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 10 and len(set(ids)) == 1
    listed = api.ok("GET", "/api/orders?limit=100", token=customer)["items"]
    assert [o["id"] for o in listed].count(ids[0]) == 1
