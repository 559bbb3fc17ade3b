"""The HTTP client of the bench and the chaos run: users, tokens, products, orders through the gateway."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import urllib3

PASSWORD = "bench password 1"


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body):
        super().__init__(f"{method} {path} -> {status}: {str(body)[:300]}")
        self.status = status


class Api:
    def __init__(self, base: str, *, read_timeout: float = 30, pool: int = 16):
        self.base = base.rstrip("/")
        self.http = urllib3.PoolManager(maxsize=pool, retries=False,
                                        timeout=urllib3.Timeout(connect=2, read=read_timeout))

    def call(self, method: str, path: str, *, body=None, token: str | None = None,
             headers: dict | None = None) -> tuple[int, object]:
        """(status, parsed JSON body or the first bytes); connection errors raise urllib3's HTTPError."""
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        r = self.http.request(method, self.base + path, headers=headers,
                              body=None if body is None else json.dumps(body).encode())
        try:
            return r.status, json.loads(r.data) if r.data else None
        except ValueError:
            return r.status, r.data[:200]

    def ok(self, method: str, path: str, expected=(200,), **kwargs):
        status, data = self.call(method, path, **kwargs)
        if status not in expected:
            raise ApiError(method, path, status, data)
        return data

    def register(self, email: str, name: str = "Bench", password: str = PASSWORD) -> dict:
        return self.ok("POST", "/api/users", (201,), body={"email": email, "name": name, "password": password})

    def login(self, email: str, password: str = PASSWORD) -> dict:
        return self.ok("POST", "/api/auth/login", body={"email": email, "password": password})

    def create_product(self, admin_token: str, *, sku: str, name: str, price_cents: int, stock: int) -> dict:
        return self.ok("POST", "/api/inventory/products", (201,), token=admin_token,
                       body={"sku": sku, "name": name, "price_cents": price_cents, "stock": stock})

    def place(self, token: str, product_id: str, quantity: int = 1) -> dict:
        return self.ok("POST", "/api/orders", (202,), token=token,
                       headers={"Idempotency-Key": f"bench-probe-{uuid.uuid4().hex}"},
                       body={"items": [{"product_id": product_id, "quantity": quantity}]})

    def order(self, token: str, order_id: str) -> dict:
        return self.ok("GET", f"/api/orders/{order_id}", token=token)


class Users:
    """The bench's customers and their tokens (refreshed before they could expire)."""

    def __init__(self, api: Api, run_id: str, ttl_seconds: float):
        self.api, self.run_id, self.ttl = api, run_id, ttl_seconds
        self.people: list[dict] = []

    def register(self, count: int, workers: int = 4) -> None:
        def one(n: int) -> dict:
            email = f"bench-{self.run_id}-{n}@example.com"
            for attempt in range(5):
                try:
                    data = self.api.register(email, name=f"Bench {n}")
                    return {"id": data["id"], "access": data["access_token"], "refresh": data["refresh_token"],
                            "at": time.monotonic()}
                except (ApiError, urllib3.exceptions.HTTPError):
                    if attempt == 4:
                        raise
                    time.sleep(0.5 * (attempt + 1))

        with ThreadPoolExecutor(workers) as pool:
            self.people = list(pool.map(one, range(count)))

    def fresh(self, min_validity: float) -> None:
        """Rotate the pair of every user whose access token would expire within ``min_validity`` s."""
        def one(person: dict) -> None:
            data = self.api.ok("POST", "/api/auth/refresh", token=person["refresh"])
            person.update(access=data["access_token"], refresh=data.get("refresh_token", person["refresh"]),
                          at=time.monotonic())

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, [p for p in self.people if time.monotonic() - p["at"] > self.ttl - min_validity]))

    def tokens(self) -> list[str]:
        return [p["access"] for p in self.people]

    def ids(self) -> list[str]:
        return [p["id"] for p in self.people]
