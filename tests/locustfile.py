"""Load test: a realistic mix of shoppers against the gateway (locust).

    locust -f tests/locustfile.py --headless -H http://127.0.0.1:8000 -u 20 -r 5 -t 60s Shopper
    locust -f tests/locustfile.py --headless -H http://127.0.0.1:8000 -u 64 -r 8 -t 60s Visitor

``Shopper`` uses the API; ``Visitor`` uses the storefront as a browser would (pages, forms
with their CSRF token, cookies): catalog, a search, a product page, sign-up, add to cart,
checkout, the order's page and its live status. Every answer but a 2xx or a redirect
counts as a failure, 429 and 503 included (RATE_LIMIT_PAGES and RATE_LIMIT_DEFAULT are per
client address: raise them to load from one machine).

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
import re
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


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PRODUCT_LINK = re.compile(r'href="/products/([0-9a-f-]{36})"')
ORDER_KEY = re.compile(r'name="key" value="([^"]+)"')


class Visitor(HttpUser):
    """A storefront visitor: browses anonymously, signs up, buys, watches the order."""

    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        self.products: list[str] = []
        self.signed_up = False
        self.order_page: str | None = None

    def _page(self, path: str, *, name: str | None = None, fragment: bool = False):
        with self.client.get(path, name=name or path, catch_response=True) as r:
            if r.status_code != 200 or (not fragment and "</html>" not in r.text):
                r.failure(f"{path} answered {r.status_code}")
            return r

    def _post(self, path: str, data: dict, *, name: str | None = None):
        with self.client.post(path, data=data, name=name or path, allow_redirects=True, catch_response=True) as r:
            if r.status_code >= 400:
                r.failure(f"POST {path} answered {r.status_code}")
            return r

    @staticmethod
    def _csrf(page) -> str:
        found = CSRF.search(page.text or "")
        return found.group(1) if found else ""

    @task(6)
    def catalog(self) -> None:
        page = self._page("/")
        self.products = PRODUCT_LINK.findall(page.text or "") or self.products

    @task(2)
    def search(self) -> None:
        self._page(f"/?q={random.choice('abcdefgh')}", name="/?q=")

    @task(5)
    def product(self) -> None:
        if self.products:
            self._page(f"/products/{random.choice(self.products)}", name="/products/{id}")

    @task(2)
    def buy(self) -> None:
        if not self.products:
            return
        if not self.signed_up:
            form = self._page("/register")
            email = f"visitor-{uuid.uuid4().hex[:12]}@example.com"
            answer = self._post("/register", {"csrf_token": self._csrf(form), "name": "Visitor", "email": email,
                                              "password": PASSWORD})
            self.signed_up = answer.status_code < 400
            if not self.signed_up:
                return
        product = random.choice(self.products)
        page = self._page(f"/products/{product}", name="/products/{id}")
        self._post("/cart/add", {"csrf_token": self._csrf(page), "product_id": product, "quantity": "1",
                                 "next": "/cart"})
        checkout = self._page("/checkout")
        key = ORDER_KEY.search(checkout.text or "")
        if key is None:
            return
        placed = self._post("/checkout", {"csrf_token": self._csrf(checkout), "key": key.group(1)})
        if "/orders/" in placed.url:
            self.order_page = placed.url.split("://", 1)[-1].split("/", 1)[-1]

    @task(3)
    def watch_order(self) -> None:
        if self.order_page:
            self._page("/" + self.order_page, name="/orders/{id}")
            self._page("/" + self.order_page + "/status", name="/orders/{id}/status", fragment=True)
