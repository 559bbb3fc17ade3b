"""Helpers the API and flow tests share: an HTTP client, users, products, waiting."""
from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack, contextmanager

import asyncpg
import urllib3
from anyio.from_thread import start_blocking_portal


class Api:
    def __init__(self, base: str):
        self.base = base
        self.http = urllib3.PoolManager(maxsize=64)

    def call(self, method, path, *, json_body=None, body=None, token=None, headers=None, timeout=15):
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        r = self.http.request(method, self.base + path, body=body, headers=headers, retries=False, timeout=timeout)
        data = json.loads(r.data) if r.data and "json" in r.headers.get("Content-Type", "") else None
        return r.status, r.headers, data

    def ok(self, method, path, expected=(200,), **kwargs):
        status, _, data = self.call(method, path, **kwargs)
        expected = (expected,) if isinstance(expected, int) else expected
        assert status in expected, (status, data)
        return data


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def register(api: Api) -> dict:
    return api.ok("POST", "/api/users", 201,
                  json_body={"email": new_email(), "name": "Test", "password": "long enough"})


def admin_token(api: Api) -> str:
    from services.users import service

    email = new_email()
    service.create_admin(email=email, password="admin password")
    return api.ok("POST", "/api/auth/login", json_body={"email": email, "password": "admin password"})["access_token"]


def create_product(api: Api, token: str, *, stock: int = 10, price_cents: int = 1250, **extra) -> dict:
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Widget", "price_cents": price_cents,
            "stock": stock, **extra}
    return api.ok("POST", "/api/inventory/products", 201, json_body=body, token=token)


def place(api: Api, token: str, lines: list[tuple[str, int]], *, key: str | None = None, expected=(202,)):
    headers = {"Idempotency-Key": key} if key else None
    return api.ok("POST", "/api/orders", expected, token=token, headers=headers,
                  json_body={"items": [{"product_id": p, "quantity": q} for p, q in lines]})


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


TERMINAL = {"fulfilled", "rejected", "cancelled"}


def wait_terminal(api: Api, token: str, order_id: str, timeout: float = 30.0) -> dict:
    def check():
        order = api.ok("GET", f"/api/orders/{order_id}", token=token)
        return order if order["status"] in TERMINAL else None

    return wait_for(check, timeout=timeout, what=f"order {order_id} to finish")


def stock_ledger(rt, product_ids: list[str]) -> dict[str, dict]:
    """Per product: on_hand, reserved, the ledger's sum, and quantities of fulfilled orders."""
    async def read(inventory, orders):
        ids = [uuid.UUID(p) for p in product_ids]
        products = await inventory.fetch_all(
            "SELECT p.id, p.on_hand, p.reserved, "
            "(SELECT coalesce(sum(delta), 0) FROM {{tables.stock_movements}} m "
            "  WHERE m.product_id = p.id AND m.order_id IS NULL) AS stocked "
            "FROM {{tables.products}} p WHERE p.id = ANY($1::uuid[])", ids)
        fulfilled = await orders.fetch_all(
            "SELECT l.product_id, sum(l.quantity) AS q FROM {{tables.order_lines}} l "
            "JOIN {{tables.orders}} o ON o.id = l.order_id WHERE o.status = 'fulfilled' "
            "AND l.product_id = ANY($1::uuid[]) GROUP BY l.product_id", ids)
        sold = {r["product_id"]: r["q"] for r in fulfilled}
        return {str(p["id"]): {"on_hand": p["on_hand"], "reserved": p["reserved"], "stocked": p["stocked"],
                               "fulfilled": int(sold.get(p["id"], 0))} for p in products}

    return rt.db.run(read, rt.db.manager("inventory"), rt.db.manager("orders"))


def assert_conserved(rt, product_ids: list[str], timeout: float = 30.0) -> None:
    """Initial stock = on_hand + fulfilled quantities; nothing left reserved.

    Stock follows orders by one message (commit/release after fulfilled/cancelled), so
    this waits for the last ones to land before it judges.
    """
    def settled():
        ledger = stock_ledger(rt, product_ids)
        return ledger if all(s["reserved"] == 0 for s in ledger.values()) else None

    try:
        ledger = wait_for(settled, timeout=timeout, what="reserved stock to settle")
    except AssertionError:
        ledger = stock_ledger(rt, product_ids)
    for pid, s in ledger.items():
        assert s["reserved"] == 0, (pid, s)
        assert s["stocked"] == s["on_hand"] + s["fulfilled"], (pid, s)


@contextmanager
def product_locked(database_url: str, product_id):
    """The product's row lock, held until the block ends on a connection of the test's own
    (as the owner): a reservation of the product waits at its ``FOR UPDATE``, inside its
    transaction, for as long as the test likes. Yields ``waiting(blocker=None)``: the
    ``(pid, application_name)`` of backends waiting for a lock held by backend ``blocker``
    (by default the holder).
    """
    with start_blocking_portal() as portal, ExitStack() as closing:
        holder = portal.call(asyncpg.connect, database_url)
        closing.callback(portal.call, holder.close)  # the lock goes with its transaction
        # pg_stat_activity is read once per transaction: the holder's own view would stand still.
        watcher = portal.call(asyncpg.connect, database_url)
        closing.callback(portal.call, watcher.close)
        portal.call(holder.execute, "BEGIN")
        portal.call(holder.execute, "SELECT FROM inventory.products WHERE id = $1 FOR UPDATE",
                    uuid.UUID(str(product_id)))

        def waiting(blocker: int | None = None) -> list[tuple[int, str]]:
            rows = portal.call(watcher.fetch, "SELECT pid, application_name FROM pg_stat_activity "
                               "WHERE wait_event_type = 'Lock' AND $1 = ANY(pg_blocking_pids(pid))",
                               blocker or holder.get_server_pid())
            return [(r["pid"], r["application_name"]) for r in rows]

        yield waiting
