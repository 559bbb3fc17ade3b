"""Two hosts on one machine: a second orders instance and a second Celery worker next to the
session's stack, against the same PostgreSQL and Redis.

The second orders instance binds 127.0.0.2 (on Linux the whole of 127.0.0.0/8 is loopback, so
no setup is needed) and, with no ``ADVERTISE_URL``, registers the address it is bound to; the
session's gateway finds it in the registry like any other instance. Both instances answer
orders, both workers run the pipeline's tasks; then the second host goes away, cleanly
(SIGTERM) or not (SIGKILL), while customers keep ordering, and nothing accepted is lost.

What the gateway promises when an instance goes away (app/gateway/upstreams.py): it offers
the instances whose heartbeat is younger than ``REGISTRY_TTL_SECONDS`` (a clean stop deletes the
row at once), re-reading the registry every ``REGISTRY_HEARTBEAT_SECONDS``; an instance that
fails to connect is skipped for the TTL; a GET that could not connect is tried once on another
instance; a POST is never retried (503). A client retries a POST with its Idempotency-Key.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter

import anyio
import asyncpg
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Live, Worker
from tests.support import Api, assert_conserved, create_product, place, register, stock_ledger, wait_for

SECOND_HOST = "127.0.0.2"
# The session gateway's registry settings (config/settings.py defaults; conftest sets none).
HEARTBEAT, TTL = 2.0, 6.0
STOCK = 100_000
PIPELINE = ("inventory.reserve", "orders.apply_reservation", "inventory.commit", "orders.settle_stock")

_http = urllib3.PoolManager()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LiveOn(Live):
    """A ``Live`` service bound to another loopback address (``BIND``); registered there."""

    def __init__(self, service: str, env: dict, *, host: str, **extra_env: str):
        self.host = host
        port = _free_port(host)
        super().__init__(service, env, port=port, BIND=f"{host}:{port}", **extra_env)

    # Live spells its URL (and the health check it waits on) with 127.0.0.1: this one is at its host.
    url = property(lambda self: f"http://{self.host}:{self.port}", lambda self, _: None)


def _answered(server: Live, method: str, statuses=("200", "202")) -> int:
    """Requests to /api/orders... this instance answered with ``statuses``, from its /metrics."""
    text = _http.request("GET", server.url + "/metrics", timeout=5, retries=False).data.decode()
    return int(sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == "http_requests_total"
                   and s.labels.get("method") == method and s.labels.get("status") in statuses
                   and s.labels.get("route", "").startswith("/api/orders")))


def _tasks_run(worker: Worker) -> int:
    """Pipeline tasks this worker has run (``celery inspect stats``), found by its node name."""
    from workers.celery_app import app

    args = list(worker.popen.args)
    prefix = args[args.index("-n") + 1].split("@")[0] + "@"

    def reply():  # a busy worker may miss one inspect's deadline
        replies = app.control.inspect(timeout=3).stats() or {}
        return next((stats for node, stats in replies.items() if node.startswith(prefix)), None)

    stats = wait_for(reply, timeout=30, interval=0.5, what=f"{prefix} to answer inspect stats")
    return sum(stats.get("total", {}).get(task, 0) for task in PIPELINE)


def _instances(gateway: Api, admin: str) -> dict[str, str]:
    """The orders instances the registry lists (as operators see it): url -> up | stale."""
    items = gateway.ok("GET", "/api/services", token=admin)["items"]
    return {i["url"]: i["status"] for i in items if i["service"] == "orders"}


def _orders(rt, *, user_ids: list[str]) -> dict[str, dict]:
    """Every order of these users, from the database: id -> status, stock settled."""
    async def read(db):
        return await db.fetch_all("SELECT id, status, stock_settled_at IS NOT NULL AS settled "
                                  "FROM {{tables.orders}} WHERE user_id = ANY($1::uuid[])",
                                  [uuid.UUID(u) for u in user_ids])

    return {str(r["id"]): dict(r) for r in rt.db.run(read, rt.db.manager("orders"))}


def _forget(database_url: str, url: str) -> None:
    """Delete a killed instance's registry row (as the owner), so it outlives no test as stale."""
    async def delete():
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            await conn.execute("DELETE FROM public.service_registry WHERE url = $1", url)
        finally:
            await conn.close()

    anyio.run(delete)


class Customers:
    """Customers ordering through the gateway, each on a thread of its own, and reading their
    orders back, paced well inside the gateway's per-user rate limit. A POST that is not
    answered 2xx is sent again with the same Idempotency-Key until it is, as a client must:
    the order may exist already (the retry then answers 200 with it)."""

    def __init__(self, api: Api, product_id: str, tokens: list[str], *, pace: float = 0.3):
        self.api, self.product_id, self.pace = api, product_id, pace
        self.attempts: list[tuple[float, str, int | None]] = []  # (started, method, status)
        self.accepted: dict[str, int] = {}  # order id -> quantity
        self.unanswered: list[str] = []  # keys given up on (the deadline passed)
        self.crashed: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in tokens]
        for thread in self.threads:
            thread.start()

    def _call(self, method: str, path: str, **kwargs):
        started = time.monotonic()
        try:
            status, _, body = self.api.call(method, path, timeout=30, **kwargs)
        except urllib3.exceptions.HTTPError:
            status, body = None, None
        with self.lock:
            self.attempts.append((started, method, status))
        return status, body

    def _run(self, token: str) -> None:
        try:
            self._order(token)
        except BaseException as exc:
            self.crashed.append(repr(exc))
            raise

    def _order(self, token: str) -> None:
        mine: list[str] = []
        while not self.stopping.is_set():
            key, quantity = str(uuid.uuid4()), random.randint(1, 3)
            body = {"items": [{"product_id": self.product_id, "quantity": quantity}]}
            deadline = time.monotonic() + 90
            while True:
                status, order = self._call("POST", "/api/orders", token=token, json_body=body,
                                           headers={"Idempotency-Key": key})
                if status in (200, 202):
                    with self.lock:
                        self.accepted[order["id"]] = quantity
                    mine.append(order["id"])
                    break
                if time.monotonic() > deadline:
                    self.unanswered.append(key)
                    break
                time.sleep(self.pace)  # a client's pause before it retries
            # Now and then, not after every order: the gateway's round robin turns once per
            # request, so a POST, GET, POST, GET rhythm would send every POST to one instance.
            if mine and random.random() < 0.5:
                self._call("GET", f"/api/orders/{random.choice(mine)}", token=token)
            self.stopping.wait(self.pace)

    def since(self, moment: float, method: str) -> list[int | None]:
        with self.lock:
            return [status for started, m, status in self.attempts if m == method and started >= moment]

    def __repr__(self) -> str:
        with self.lock:
            attempts = Counter((method, status) for _, method, status in self.attempts)
            return f"<customers: {len(self.accepted)} accepted, attempts {attempts}, crashed {self.crashed}>"

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_second_host_shares_the_work_and_stopping_it_loses_nothing(
        sig, rt, database_url, stack_env, live_orders, live_worker, gateway, admin):
    product = create_product(gateway, admin, stock=STOCK)
    users = [register(gateway) for _ in range(3)]
    tokens = [u["access_token"] for u in users]
    env = {**stack_env, "ORDERS_URL": live_orders.url}
    second = worker = customers = None
    try:
        # -- the second host: orders on 127.0.0.2, registered; a worker on the same broker
        second = LiveOn("orders", env, host=SECOND_HOST, REGISTRY_ENABLED="1", WEB_CONCURRENCY="1",
                        GUNICORN_THREADS="8")
        worker = Worker(env)
        assert second.url == f"http://{SECOND_HOST}:{second.port}"
        wait_for(lambda: {live_orders.url: "up", second.url: "up"}.items() <= _instances(gateway, admin).items(),
                 timeout=30, what="both orders instances listed up in the registry")
        # The gateway re-reads the registry every HEARTBEAT seconds: it routes to the new one then.
        wait_for(lambda: gateway.call("GET", "/api/orders?limit=1", token=tokens[0])[0] == 200
                 and _answered(second, "GET") > 0, timeout=30, what="the gateway to route to 127.0.0.2")

        # -- (a) both share the work
        first_posts, second_posts = _answered(live_orders, "POST"), _answered(second, "POST")
        first_tasks, second_tasks = _tasks_run(live_worker), _tasks_run(worker)
        placed = {place(gateway, tokens[0], [(product["id"], 2)])["id"] for _ in range(20)}

        def fulfilled():
            orders = _orders(rt, user_ids=[users[0]["id"]])
            return all(orders[o]["status"] == "fulfilled" and orders[o]["settled"] for o in placed) and orders

        wait_for(fulfilled, timeout=90, interval=0.3, what="the first 20 orders to be fulfilled and settled")
        by_first = _answered(live_orders, "POST") - first_posts
        by_second = _answered(second, "POST") - second_posts
        assert by_first + by_second == 20 and by_first >= 5 and by_second >= 5, (by_first, by_second)
        ran_first = _tasks_run(live_worker) - first_tasks
        ran_second = _tasks_run(worker) - second_tasks
        assert ran_first > 0 and ran_second > 0, (ran_first, ran_second)

        # -- (b) the second host goes away while orders flow
        customers = Customers(gateway, product["id"], tokens[1:])
        before = _answered(second, "POST")
        try:
            wait_for(lambda: _answered(second, "POST") - before >= 5 and len(customers.accepted) >= 10,
                     timeout=60, interval=0.2, what="orders flowing through both instances")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {customers!r}, {_answered(second, 'POST') - before} "
                                 f"answered at {SECOND_HOST}") from None
        stopped_at = time.monotonic()
        if sig == signal.SIGKILL:
            os.killpg(worker.pid, signal.SIGKILL)  # the host is gone: no goodbye from anything on it
            os.killpg(second.pid, signal.SIGKILL)
            worker.stop()  # reaped
            second.stop()
            # Failures may go on until its heartbeat is older than the TTL and the gateway re-read.
            settled_at = stopped_at + TTL + 2 * HEARTBEAT + 1
        else:
            assert worker.stop() == 0, worker.log_tail()  # warm shutdown: running tasks finish
            assert second.stop() == 0, second.log_tail()  # graceful: in-flight requests finish
            # Deregistered on the way out; the gateway has re-read the registry a heartbeat later.
            assert second.url not in _instances(gateway, admin)
            settled_at = time.monotonic() + HEARTBEAT + 1
        wait_for(lambda: len(customers.since(settled_at, "POST")) >= 15, timeout=90, interval=0.2,
                 what="15 orders placed after the gateway could know")
        customers.stop()
        assert not any(t.is_alive() for t in customers.threads) and not customers.crashed, customers

        if sig == signal.SIGKILL:
            instances = _instances(gateway, admin)
            assert instances.get(second.url) == "stale" and instances.get(live_orders.url) == "up", instances
        posts, gets = Counter(customers.since(0, "POST")), Counter(customers.since(0, "GET"))
        # A POST sent to the instance as it went is refused (503) and retried with its key...
        assert set(posts) <= {200, 202, 503}, posts
        assert not customers.unanswered
        # ...only until the gateway stops routing to it: afterwards every order is accepted.
        assert set(customers.since(settled_at, "POST")) <= {202}, Counter(customers.since(settled_at, "POST"))
        # A GET that met the stopped instance was tried on the other one.
        assert set(gets) == {200}, gets

        # -- nothing lost: every accepted order fulfilled and its stock settled, nothing else made
        accepted = {**{o: 2 for o in placed}, **customers.accepted}

        def all_done():
            orders = _orders(rt, user_ids=[u["id"] for u in users])
            return all(o["status"] == "fulfilled" and o["settled"] for o in orders.values()) and orders

        # What a SIGKILLed worker held (if the kill caught any) comes back by reconciliation
        # (ORDER_REANNOUNCE_AFTER_SECONDS, 30 s), long before Redis's visibility timeout.
        orders = wait_for(all_done, timeout=240, interval=0.5, what="every order fulfilled and settled")
        assert set(orders) == set(accepted)
        assert_conserved(rt, [product["id"]], timeout=60)
        ledger = stock_ledger(rt, [product["id"]])[product["id"]]
        assert ledger["fulfilled"] == sum(accepted.values())
        assert ledger["on_hand"] == STOCK - sum(accepted.values())
    finally:
        if customers is not None:
            customers.stop()
        for process in (worker, second):
            if process is not None:
                process.stop()
        if second is not None:
            _forget(database_url, second.url)
