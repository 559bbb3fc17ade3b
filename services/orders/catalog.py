"""The inventory service's HTTP API, as the orders domain sees it: prices and availability.

Behind a circuit breaker (pybreaker's, with calls not serialized: ``infra/breaker.py``):
after ``fail_max`` consecutive failures (connection errors, timeouts, 5xx) the circuit
opens and placing an order answers 503 with Retry-After at once, instead of every
request waiting for a timeout.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pybreaker
import urllib3

from infra.breaker import ConcurrentBreaker
from infra.errors import Unavailable

logger = logging.getLogger(__name__)


class InventoryDown(Exception):
    """Counted by the breaker: the inventory service failed, not the request."""


class Catalog:
    def __init__(self, *, base_url: str, timeout: float, fail_max: int, reset_timeout: float):
        self.base_url = base_url.rstrip("/")
        self.reset_timeout = reset_timeout
        self.http = urllib3.PoolManager(
            maxsize=16, timeout=urllib3.Timeout(connect=min(timeout, 1.0), read=timeout),
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, other=0, raise_on_status=False),
        )
        self.breaker = ConcurrentBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout, name="inventory",
            exclude=[lambda e: not isinstance(e, InventoryDown)],
        )

    def products(self, product_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
        """Active products among ``product_ids``, keyed by id."""
        try:
            return self.breaker.call(self._fetch, product_ids)
        except pybreaker.CircuitBreakerError:
            retry_after = max(1, int(self._remaining()))
            raise Unavailable("the inventory service is unavailable, retry later", retry_after=retry_after) from None
        except InventoryDown as exc:
            logger.warning("inventory lookup failed: %s", exc)
            raise Unavailable("the inventory service is unavailable, retry later") from None

    def _remaining(self) -> float:
        opened = getattr(self.breaker, "_state_storage").opened_at
        if opened is None:
            return self.reset_timeout
        return self.reset_timeout - (time.time() - opened.timestamp())

    def _fetch(self, product_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
        ids = ",".join(str(p) for p in product_ids)
        try:
            response = self.http.request(
                "GET", f"{self.base_url}/api/inventory/products", fields={"ids": ids, "limit": "100"}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InventoryDown(type(exc).__name__) from None
        if response.status >= 500:
            raise InventoryDown(f"status {response.status}")
        if response.status != 200:
            raise RuntimeError(f"inventory answered {response.status} to a product lookup")
        return {uuid.UUID(p["id"]): p for p in json.loads(response.data)["items"]}


_catalogs: dict[str, Catalog] = {}
_lock = threading.Lock()


def catalog(settings) -> Catalog:
    """This process's client (and breaker) for the inventory service at the configured URL."""
    url = settings.service_urls["inventory"]
    with _lock:
        if url not in _catalogs:
            _catalogs[url] = Catalog(
                base_url=url, timeout=settings.inventory_timeout,
                fail_max=settings.inventory_breaker_fail_max, reset_timeout=settings.inventory_breaker_reset,
            )
        return _catalogs[url]
