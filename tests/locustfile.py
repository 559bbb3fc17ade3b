"""Load test: a realistic mix of shoppers against the gateway (locust).

    locust -f tests/locustfile.py --headless -H http://127.0.0.1:8000 -u 20 -r 5 -t 60s

Each simulated shopper registers (or, every few sessions, logs in again), then
browses the catalog, views products, places orders (with an Idempotency-Key, as a
real client retrying safely would), polls their status until they are final,
lists its orders, reads its profile and cancels some orders. Think time between
actions: ``LOCUST_WAIT_MIN`` .. ``LOCUST_WAIT_MAX`` seconds (default 0.5 .. 2).
A cancel that loses the race to fulfilment (409) is a normal outcome, not a
failure. Only the gateway is used, so any base URL works. Not collected by
pytest (no ``test_`` prefix); run by ``python -m bench`` as its "mixed" scenario.
"""
from __future__ import annotations

import os
import random
import uuid

from locust import HttpUser, between, task

WAIT_MIN = float(os.environ.get("LOCUST_WAIT_MIN", "0.5"))
WAIT_MAX = float(os.environ.get("LOCUST_WAIT_MAX", "2"))
PASSWORD = "locust password"
FINAL = {"fulfilled", "rejected", "cancelled"}


class Shopper(HttpUser):
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        self.email = f"locust-{uuid.uuid4().hex[:12]}@example.com"
        self.token: str | None = None
        self.products: list[str] = []
        self.open_orders: list[str] = []  # placed, not known to be final yet
        self.orders: list[str] = []
        with self.client.post("/api/users", json={"email": self.email, "name": "Locust", "password": PASSWORD},
                              name="/api/users (register)", catch_response=True) as r:
            if r.status_code == 201:
                self.token = r.json()["access_token"]
            else:
                r.failure(f"register answered {r.status_code}")
        self._load_catalog()

    # -- helpers ------------------------------------------------------------------
    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _login(self) -> None:
        with self.client.post("/api/auth/login", json={"email": self.email, "password": PASSWORD},
                              catch_response=True) as r:
            if r.status_code == 200:
                self.token = r.json()["access_token"]
            else:
                r.failure(f"login answered {r.status_code}")

    def _load_catalog(self) -> None:
        with self.client.get("/api/inventory/products?limit=50", name="/api/inventory/products",
                             catch_response=True) as r:
            if r.status_code == 200:
                items = r.json().get("items", [])
                # Products that can be bought many times over: a load test should not sell out.
                self.products = [p["id"] for p in items if p.get("available", 0) > 100] or [p["id"] for p in items]
            else:
                r.failure(f"catalog answered {r.status_code}")

    def _expired(self, status: int) -> bool:
        if status == 401:  # access token expired (or revoked): log in again, as an app would
            self._login()
            return True
        return False

    # -- the mix (weights: how often a shopper does each) ------------------------------
    @task(10)
    def browse(self) -> None:
        self._load_catalog()

    @task(8)
    def view_product(self) -> None:
        if self.products:
            self.client.get(f"/api/inventory/products/{random.choice(self.products)}",
                            name="/api/inventory/products/{id}")

    @task(4)
    def place_order(self) -> None:
        if not self.products or not self.token:
            return
        lines = random.sample(self.products, k=min(len(self.products), random.choice((1, 1, 1, 2, 3))))
        body = {"items": [{"product_id": p, "quantity": random.randint(1, 3)} for p in lines]}
        headers = {**self.auth, "Idempotency-Key": uuid.uuid4().hex}
        with self.client.post("/api/orders", json=body, headers=headers, catch_response=True) as r:
            if r.status_code in (200, 202):
                order_id = r.json()["id"]
                self.open_orders.append(order_id)
                self.orders.append(order_id)
            elif not self._expired(r.status_code):
                r.failure(f"placing answered {r.status_code}")

    @task(6)
    def poll_order(self) -> None:
        if not self.open_orders:
            return
        order_id = random.choice(self.open_orders)
        with self.client.get(f"/api/orders/{order_id}", headers=self.auth, name="/api/orders/{id}",
                             catch_response=True) as r:
            if r.status_code == 200:
                if r.json()["status"] in FINAL:
                    self.open_orders.remove(order_id)
            elif not self._expired(r.status_code):
                r.failure(f"reading an order answered {r.status_code}")

    @task(3)
    def list_orders(self) -> None:
        with self.client.get("/api/orders?limit=20", headers=self.auth, name="/api/orders",
                             catch_response=True) as r:
            if r.status_code != 200 and not self._expired(r.status_code):
                r.failure(f"listing orders answered {r.status_code}")

    @task(1)
    def cancel_order(self) -> None:
        if not self.orders:
            return
        order_id = random.choice(self.orders[-5:])
        with self.client.post(f"/api/orders/{order_id}/cancel", headers=self.auth, name="/api/orders/{id}/cancel",
                              catch_response=True) as r:
            if r.status_code == 200:
                if order_id in self.open_orders:
                    self.open_orders.remove(order_id)
            elif r.status_code == 409:  # already fulfilled, rejected or cancelled: a normal outcome
                r.success()
            elif not self._expired(r.status_code):
                r.failure(f"cancelling answered {r.status_code}")

    @task(1)
    def profile(self) -> None:
        with self.client.get("/api/users/me", headers=self.auth, catch_response=True) as r:
            if r.status_code != 200 and not self._expired(r.status_code):
                r.failure(f"reading the profile answered {r.status_code}")

    @task(1)
    def log_in_again(self) -> None:
        self._login()
