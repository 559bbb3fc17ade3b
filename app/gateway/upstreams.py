"""Where each service is, and whether to try it: registry discovery, spreading, breakers.

Instances come from the service registry (refreshed every couple of seconds, per
gateway worker); the configured URL is the fallback while a service has none
registered. Requests go round-robin over live instances; an instance that refused
a connection is skipped until its heartbeat could have expired anyway. Each
service has a circuit breaker (pybreaker's, see ``breaker.py``) whose state lives in
Redis, so every gateway worker sees the same circuit.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time

import pybreaker
import redis
import urllib3
from opentelemetry import propagate
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from config import tracing
from config.settings import Settings
from infra import registry, runtime
from infra.breaker import ConcurrentBreaker, SharedStateStorage
from infra.errors import Unavailable

logger = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class UpstreamDown(Exception):
    """Counted by the breaker: the upstream could not be reached or did not answer."""


class UpstreamBusy(Exception):
    """Not counted by the breaker: this gateway worker has its share of requests waiting on
    the upstream already (GATEWAY_UPSTREAM_CONCURRENCY), and none finished within the wait."""


class Upstreams:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.configured = dict(settings.service_urls)
        self.http = urllib3.PoolManager(
            num_pools=32,
            maxsize=32,
            timeout=urllib3.Timeout(connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout),
            retries=False,  # retrying is decided here, per method and instance
        )
        self._instances: dict[str, list[str]] = {}
        self._refreshed = 0.0
        self._ejected: dict[str, float] = {}
        self._turn = itertools.count()
        self._lock = threading.Lock()
        # Its own lock: a refresh waits on a query, which must not hold up finding a breaker.
        self._refresh_lock = threading.Lock()
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._bulkheads: dict[str, threading.BoundedSemaphore] = {}
        self._pools: dict[str, tuple[urllib3.HTTPConnectionPool, str]] = {}  # url -> (pool, its path)

    # -- discovery -----------------------------------------------------------------
    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < self.settings.registry_heartbeat_seconds:
            return
        with self._refresh_lock:
            if now - self._refreshed < self.settings.registry_heartbeat_seconds:
                return
            self._refreshed = now
            if not self.settings.registry_enabled:
                return
            try:
                db = runtime.db()
                rows = db.run(registry.live_instances, db.manager(registry.SCHEMA),
                              ttl_seconds=self.settings.registry_ttl_seconds, timeout=1.0)
            except Unavailable:
                logger.warning("registry unavailable; keeping the last known instances")
                return
            found: dict[str, list[str]] = {}
            for row in rows:
                found.setdefault(row["service"], []).append(row["url"])
            self._instances = found

    def candidates(self, service: str) -> list[str]:
        """Live instances of ``service``, rotated so successive calls start elsewhere."""
        self._refresh()
        urls = self._instances.get(service) or [self.configured[service]]
        now = time.monotonic()
        healthy = [u for u in urls if self._ejected.get(u, 0) <= now] or urls
        start = next(self._turn) % len(healthy)
        return healthy[start:] + healthy[:start]

    def eject(self, url: str) -> None:
        # Until its last heartbeat has aged out of the registry (TTL) and this process has
        # read the registry again (one refresh interval): sooner, a stale list brings it back.
        self._ejected[url] = (time.monotonic() + self.settings.registry_ttl_seconds
                              + self.settings.registry_heartbeat_seconds)

    # -- circuit breakers ------------------------------------------------------------
    def breaker(self, service: str) -> pybreaker.CircuitBreaker:
        with self._lock:
            if service not in self._breakers:
                self._breakers[service] = ConcurrentBreaker(
                    fail_max=self.settings.gateway_breaker_fail_max,
                    reset_timeout=self.settings.gateway_breaker_reset_seconds,
                    state_storage=self._storage(service),
                    exclude=[lambda e: not isinstance(e, UpstreamDown)],
                    name=f"gateway:{service}",
                )
            return self._breakers[service]

    def _storage(self, service: str) -> SharedStateStorage:
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return SharedStateStorage(client, namespace=f"oms:breaker:{service}")

    def retry_after(self, service: str) -> int:
        breaker = self.breaker(service)
        opened = breaker._state_storage.opened_at
        if opened is None:
            return int(self.settings.gateway_breaker_reset_seconds)
        from datetime import datetime, timezone

        elapsed = (datetime.now(timezone.utc) - opened.replace(tzinfo=opened.tzinfo or timezone.utc)).total_seconds()
        return max(1, int(self.settings.gateway_breaker_reset_seconds - elapsed + 0.999))

    # -- requests ------------------------------------------------------------------------
    def bulkhead(self, service: str) -> threading.BoundedSemaphore:
        found = self._bulkheads.get(service)
        if found is None:
            with self._lock:
                found = self._bulkheads.setdefault(
                    service, threading.BoundedSemaphore(self.settings.gateway_upstream_concurrency))
        return found

    def request(self, service: str, method: str, path: str, **kwargs) -> urllib3.BaseHTTPResponse:
        """Send to one instance; a GET that could not connect is tried once on another.

        Outside the breaker, a bulkhead: waiting for room is this gateway's own queueing,
        which says nothing about the upstream's health."""
        bulkhead = self.bulkhead(service)
        if not bulkhead.acquire(timeout=self.settings.gateway_upstream_wait_seconds):
            raise UpstreamBusy(service)
        try:
            return self._request(service, method, path, **kwargs)
        finally:
            bulkhead.release()

    def _request(self, service: str, method: str, path: str, **kwargs) -> urllib3.BaseHTTPResponse:
        if not tracing.unsampled():
            return self.breaker(service).call(self._attempt, service, method, path, kwargs)
        # A trace the sampler dropped: pass its context on, without the urllib3
        # instrumentation's span work (its client span would be dropped too).
        kwargs["headers"] = headers = dict(kwargs.get("headers") or {})
        propagate.inject(headers)
        with suppress_http_instrumentation():
            return self.breaker(service).call(self._attempt, service, method, path, kwargs)

    def _attempt(self, service, method, path, kwargs):
        tries = 2 if method in IDEMPOTENT else 1
        error: Exception | None = None
        for url in self.candidates(service)[:tries]:
            try:
                pool, prefix = self._pool(url)
                return pool.urlopen(method, prefix + path, body=kwargs.get("body"), headers=kwargs.get("headers"),
                                    retries=False, redirect=False, assert_same_host=False)
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise UpstreamDown("timeout") from exc  # it may be working on it: never retried
            except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                    urllib3.exceptions.ProtocolError) as exc:
                self.eject(url)
                error = exc
                logger.warning("upstream instance failed", extra={"upstream": service, "url": url,
                                                                 "error": type(exc).__name__})
        raise UpstreamDown("unreachable") from error

    def _pool(self, url: str) -> tuple[urllib3.HTTPConnectionPool, str]:
        """The connection pool of the instance at ``url`` and the path it is under, looked up once:
        the PoolManager parses the URL and builds its pool key on every request (~3 % of a gateway
        request). A pool the manager has closed since (it keeps 32) is looked up again."""
        found = self._pools.get(url)
        if found is None or found[0].pool is None:
            found = (self.http.connection_from_url(url), (urllib3.util.parse_url(url).path or "").rstrip("/"))
            self._pools = {**{u: f for u, f in self._pools.items() if f[0].pool is not None}, url: found}
        return found

    def health(self, service: str) -> None:
        url = self.candidates(service)[0]
        try:
            response = self.http.request("GET", url + "/health", timeout=urllib3.Timeout(total=1.0))
        except urllib3.exceptions.HTTPError:
            raise Unavailable(f"{service} is unreachable") from None
        if response.status != 200:
            raise Unavailable(f"{service} answered {response.status}")
