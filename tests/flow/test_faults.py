"""Faults lose no accepted order and never oversell: redelivery, a killed worker, a broker
outage, inventory down, expiry, dead letters.

Each test that stops or starves something runs its own orders service and worker on a
broker of its own, so the session's worker never steals its messages.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import psutil

from tests.conftest import PYTHON, ROOT, Live, Worker, free_port
from tests.support import (
    Api,
    assert_conserved,
    create_product,
    place,
    product_locked,
    stock_ledger,
    wait_for,
    wait_terminal,
)


def _history(order):
    return [(h["status"], h["reason"]) for h in order["history"]]


def test_the_same_event_delivered_twice_has_one_effect(rt, gateway, admin):
    from infra import messaging, runtime
    from services.inventory import service as inventory
    from services.orders import repository
    from services.orders import service as orders

    def outbox_count(schema, order_id, event_type):
        return rt.db.run(lambda db: db.fetch_value(
            "SELECT count(*) FROM {{tables.outbox}} WHERE aggregate_id = $1 AND event_type = $2",
            order_id, event_type), rt.db.manager(schema))

    # Collect what the services publish (marked published, so no sweep sends it to a worker).
    collected = []

    def collect(schema, events):
        collected.extend(events)
        rt.db.run(messaging.mark_published, rt.db.manager(schema), [e["id"] for e in events])

    previous = runtime._publisher
    runtime.set_publisher(collect)
    try:
        product = create_product(gateway, admin, stock=5)
        order, placed = rt.db.run(
            repository.insert_order, rt.db.manager("orders"), user_id=uuid.uuid4(),
            lines=[{"product_id": uuid.UUID(product["id"]), "quantity": 2, "name": product["name"],
                    "unit_price_cents": product["price_cents"]}],
            total_cents=2 * product["price_cents"], currency=product["currency"], idempotency_key=None,
            request_hash="test",
        )
        collect("orders", [placed])
        inventory.reserve_order(event=placed)
        inventory.reserve_order(event=placed)
        assert stock_ledger(rt, [product["id"]])[product["id"]]["reserved"] == 2
        answers = [e for e in collected if e["type"] == "inventory.reserved"]
        assert len(answers) == 2 and answers[0]["id"] == answers[1]["id"]  # the duplicate is answered alike
        # A redelivered reservation result does not move the order twice either (no fulfilment
        # delay in this session: the order is fulfilled in the reservation's transaction).
        orders.apply_reservation(event=answers[0])
        orders.apply_reservation(event=answers[1])
        moved = rt.db.run(repository.get_order, rt.db.manager("orders"), order_id=order["id"])
        assert _history(moved) == [("pending", None), ("reserved", None), ("fulfilled", None)]
        assert outbox_count("orders", order["id"], "order.reserved") == 0  # one step, one event: order.fulfilled
        assert outbox_count("orders", order["id"], "order.fulfilled") == 1
        fulfilled = [e for e in collected if e["type"] == "order.fulfilled"]
        assert len(fulfilled) == 1
        inventory.commit_order(event=fulfilled[0])
        inventory.commit_order(event=fulfilled[0])
        after = stock_ledger(rt, [product["id"]])[product["id"]]
        assert (after["on_hand"], after["reserved"]) == (3, 0)
        assert outbox_count("inventory", order["id"], "inventory.committed") == 1
    finally:
        runtime.set_publisher(previous)


def test_a_cancel_before_the_reservation_leaves_a_tombstone(rt, gateway, admin):
    from services.inventory import service as inventory

    product = create_product(gateway, admin, stock=5)
    order_id = str(uuid.uuid4())
    inventory.release_order(event={"id": str(uuid.uuid4()), "type": "order.cancelled",
                                   "payload": {"order_id": order_id, "reason": "customer"}})
    inventory.reserve_order(event={"id": str(uuid.uuid4()), "type": "order.placed",
                                   "payload": {"order_id": order_id,
                                               "lines": [{"product_id": product["id"], "quantity": 1}]}})
    assert stock_ledger(rt, [product["id"]])[product["id"]]["reserved"] == 0


def test_a_worker_killed_mid_reservation_completes_the_order_exactly_once(
        rt, database_url, stack_env, live_users, gateway, admin, customer, own_broker):
    product = create_product(gateway, admin, stock=3)
    env = {**stack_env, "CELERY_BROKER_URL": own_broker}
    orders = Live("orders", env, WEB_CONCURRENCY="1")
    # A name of its own tells its backends from other workers'; its reservation may wait at
    # the test's row lock longer than the default call deadline, lock and statement timeouts.
    name = f"worker-{uuid.uuid4().hex[:6]}"
    worker = Worker(env, concurrency=1, SERVICE_NAME=name, DB_TIMEOUT_SECONDS="40",
                    DB_LOCK_TIMEOUT_MS="60000", DB_STATEMENT_TIMEOUT_MS="60000")
    try:
        api = Api(orders.url)
        with product_locked(database_url, product["id"]) as waiting:
            order = place(api, customer, [(product["id"], 2)])
            wait_for(lambda: [app for _, app in waiting()] == [f"oms-{name}"],
                     what="the reservation to wait at its row lock")
            [pool] = psutil.Process(worker.proc.pid).children()  # concurrency=1: the one pool process
            os.kill(pool.pid, signal.SIGKILL)  # inside the reservation's transaction
            pool.wait(10)
        done = wait_terminal(api, customer, order["id"], timeout=60)
        assert done["status"] == "fulfilled", worker.log()[-3000:]
        assert _history(done) == [("pending", None), ("reserved", None), ("fulfilled", None)]
        final = wait_for(lambda: (s := stock_ledger(rt, [product["id"]])[product["id"]])["reserved"] == 0 and s)
        assert final["on_hand"] == 1
        assert_conserved(rt, [product["id"]])
    finally:
        worker.stop()
        orders.stop()


def test_a_worker_killed_mid_batch_redoes_only_what_it_had_not_done(
        rt, database_url, stack_env, gateway, admin, own_broker):
    """One message carries two orders' order.placed; the worker reserves the first, then
    waits at the second's row lock and is SIGKILLed. The message comes back whole: the first
    order's reservation is not made again (its inbox row), the second is made once."""
    from infra import messaging
    from services.orders import repository
    from tests.conftest import celery_broker
    from workers.celery_app import app

    first, second = create_product(gateway, admin, stock=5), create_product(gateway, admin, stock=5)
    placed = []
    for product, quantity in ((first, 2), (second, 3)):
        line = {"product_id": uuid.UUID(product["id"]), "quantity": quantity, "unit_price_cents": 100, "name": "W"}
        order, event = rt.db.run(repository.insert_order, rt.db.manager("orders"), user_id=uuid.uuid4(),
                                 lines=[line], total_cents=100 * quantity, currency="USD", idempotency_key=None,
                                 request_hash=uuid.uuid4().hex)
        placed.append((order, event))
    # This test sends them itself, as one message: no sweep (the session's worker runs one) may.
    rt.db.run(messaging.mark_published, rt.db.manager("orders"), [event["id"] for _, event in placed])
    name = f"worker-{uuid.uuid4().hex[:6]}"
    worker = Worker({**stack_env, "CELERY_BROKER_URL": own_broker}, concurrency=1, SERVICE_NAME=name,
                    DB_TIMEOUT_SECONDS="40", DB_LOCK_TIMEOUT_MS="60000", DB_STATEMENT_TIMEOUT_MS="60000")
    try:
        with product_locked(database_url, second["id"]) as waiting:
            with celery_broker(app, own_broker):
                app.send_task("inventory.reserve", args=[[event for _, event in placed]], queue="inventory")
            wait_for(lambda: [app_name for _, app_name in waiting()] == [f"oms-{name}"],
                     what="the second reservation to wait at its row lock")
            assert stock_ledger(rt, [first["id"]])[first["id"]]["reserved"] == 2  # the first is done
            [pool] = psutil.Process(worker.proc.pid).children()
            os.kill(pool.pid, signal.SIGKILL)  # inside the second event's transaction
            pool.wait(10)

        def status(order_id):
            return rt.db.run(repository.get_order, rt.db.manager("orders"), order_id=order_id)["status"]

        for order, _ in placed:
            wait_for(lambda: status(order["id"]) == "fulfilled", timeout=60,
                     what=f"order {order['id']} to be fulfilled\n{worker.log()[-3000:]}")
        assert_conserved(rt, [first["id"], second["id"]])
        ledger = stock_ledger(rt, [first["id"], second["id"]])
        assert (ledger[first["id"]]["on_hand"], ledger[second["id"]]["on_hand"]) == (3, 2)
    finally:
        worker.stop()


def test_orders_accepted_during_a_broker_outage_all_finish_after_it_returns(
        rt, stack_env, gateway, admin, customer, tmp_path):
    from devtools import embedded

    from config.celery import broker_url

    broker = embedded.start_redis(tmp_path / "broker", persistent=True)
    product = create_product(gateway, admin, stock=4)
    # The broker is a Redis of its own: token revocations (another Redis) stay reachable,
    # as they must outside development, where revocation checks fail closed.
    env = {**stack_env, "CELERY_BROKER_URL": broker_url(broker.url)}
    orders = Live("orders", env, WEB_CONCURRENCY="1")
    worker = None
    try:
        api = Api(orders.url)
        broker.stop()
        accepted = [place(api, customer, [(product["id"], 1)])["id"] for _ in range(6)]
        assert len(accepted) == 6  # every one answered 202 with Redis down
        broker = embedded.start_redis(tmp_path / "broker", persistent=True)
        worker = Worker(env, beat=True, OUTBOX_SWEEP_SECONDS="1")
        outcomes = sorted(wait_terminal(api, customer, oid, timeout=90)["status"] for oid in accepted)
        assert outcomes == ["fulfilled"] * 4 + ["rejected"] * 2
        wait_for(lambda: stock_ledger(rt, [product["id"]])[product["id"]]["reserved"] == 0)
        assert_conserved(rt, [product["id"]])
    finally:
        if worker:
            worker.stop()
        orders.stop()
        broker.stop()


def test_with_inventory_down_known_products_are_still_ordered_and_lookups_fail_fast(
        rt, stack_env, live_worker, gateway, admin, customer):
    """Orders prices from its read model of the catalog: with inventory's API down, a product
    it knows is ordered and fulfilled as usual; one it has never heard of needs a lookup,
    which fails fast behind the breaker, and answers again once inventory is back."""
    from services.orders import repository

    product = create_product(gateway, admin, stock=5)
    wait_for(lambda: rt.db.run(repository.catalog_products, rt.db.manager("orders"),
                               product_ids=[uuid.UUID(product["id"])]), what="the product in orders' read model")
    inventory_port = free_port()
    orders = Live("orders", {**stack_env, "INVENTORY_URL": f"http://127.0.0.1:{inventory_port}"},
                  WEB_CONCURRENCY="1", INVENTORY_BREAKER_FAIL_MAX="3", INVENTORY_BREAKER_RESET_SECONDS="2")
    inventory = None
    try:
        api = Api(orders.url)
        known = place(api, customer, [(product["id"], 1)])
        assert wait_terminal(gateway, customer, known["id"])["status"] == "fulfilled"
        unheard_of = {"items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]}
        for _ in range(3):
            assert api.call("POST", "/api/orders", token=customer, json_body=unheard_of)[0] == 503
        started = time.monotonic()
        status, headers, problem = api.call("POST", "/api/orders", token=customer, json_body=unheard_of)
        assert status == 503 and int(headers["Retry-After"]) >= 1 and problem["status"] == 503
        assert time.monotonic() - started < 0.25  # the open breaker answers at once
        assert place(api, customer, [(product["id"], 1)])["status"] == "pending"  # known: still accepted
        inventory = Live("inventory", stack_env, port=inventory_port, WEB_CONCURRENCY="1")
        wait_for(lambda: api.call("POST", "/api/orders", token=customer, json_body=unheard_of)[0] == 422,
                 timeout=15, interval=0.5, what="the breaker to close and inventory to answer")
    finally:
        if inventory:
            inventory.stop()
        orders.stop()


def test_a_reservation_not_fulfilled_in_time_expires_and_releases_stock(
        rt, stack_env, gateway, admin, customer, own_broker):
    product = create_product(gateway, admin, stock=2)
    env = {**stack_env, "CELERY_BROKER_URL": own_broker}
    orders = Live("orders", env, WEB_CONCURRENCY="1")
    worker = Worker(env, beat=True, RESERVATION_TTL_SECONDS="1", FULFILMENT_DELAY_SECONDS="6",
                    OUTBOX_SWEEP_SECONDS="1")
    try:
        api = Api(orders.url)
        order = place(api, customer, [(product["id"], 2)])
        done = wait_terminal(api, customer, order["id"], timeout=30)
        assert (done["status"], done["reason"]) == ("cancelled", "expired")
        assert _history(done) == [("pending", None), ("reserved", None), ("cancelled", "expired")]
        final = wait_for(lambda: (s := stock_ledger(rt, [product["id"]])[product["id"]])["reserved"] == 0 and s)
        assert final["on_hand"] == 2
        time.sleep(6)  # the delayed fulfilment arrives after expiry and must do nothing
        assert api.ok("GET", f"/api/orders/{order['id']}", token=customer)["status"] == "cancelled"
        assert_conserved(rt, [product["id"]])
    finally:
        worker.stop()
        orders.stop()


def _cli(env, *args):
    return subprocess.run([PYTHON, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_task_that_gives_up_is_a_dead_letter_that_can_be_redriven(rt, stack_env, own_broker):
    env = {**stack_env, "CELERY_BROKER_URL": own_broker}
    worker = Worker(env, concurrency=1)
    try:
        from celery import Celery

        from config.celery import celery_config
        from config.settings import load_settings

        sender = Celery("test-sender")
        sender.conf.update(celery_config(load_settings(env)))
        sender.conf.broker_url = own_broker
        marker = uuid.uuid4().hex
        sender.send_task("inventory.reserve", args=[{"id": "not-a-uuid", "type": "order.placed",
                                                     "payload": {"marker": marker}}], queue="inventory")

        def listed():
            result = _cli(env, "dead-letters", "list")
            rows = [json.loads(line) for line in result.stdout.splitlines() if marker in line]
            return rows[0] if rows else None

        row = wait_for(listed, timeout=30, interval=0.5, what="the dead letter")
        assert row["task_name"] == "inventory.reserve" and row["error"]
        redrive = _cli(env, "dead-letters", "retry", row["id"])
        assert redrive.returncode == 0, redrive.stderr
        # The redriven message fails the same way: a new dead letter, the old one marked redriven.
        wait_for(lambda: (r := listed()) and r["id"] != row["id"], timeout=30, interval=0.5)
        assert _cli(env, "dead-letters", "retry", str(uuid.uuid4())).returncode == 1
    finally:
        worker.stop()


def test_a_running_worker_keeps_its_liveness_file_fresh(stack_env, own_broker, tmp_path):
    alive = tmp_path / "alive"
    env = {**stack_env, "CELERY_BROKER_URL": own_broker}
    worker = Worker(env, concurrency=1, WORKER_LIVENESS_FILE=str(alive), WORKER_LIVENESS_INTERVAL="0.5")
    try:
        probe = [PYTHON, "-m", "workers.liveness", str(alive), "--max-age", "5"]
        assert subprocess.run(probe, cwd=ROOT, env=env).returncode == 0
    finally:
        worker.stop()
    assert subprocess.run([PYTHON, "-m", "workers.liveness", str(alive)], cwd=ROOT, env=env,
                          capture_output=True).returncode == 1
