"""Circuit breakers: pybreaker's state machine, with two changes measured in `make bench`.

Written here rather than taken whole from pybreaker because of two of its costs in a
threaded gunicorn worker (both found by profiling the read and placement benchmarks):

- ``CircuitBreaker.call`` holds the breaker's lock for the whole protected call, so a
  gthread worker sent one request per upstream at a time and its other threads
  queued behind it (danielfm/pybreaker#55, open). :class:`ConcurrentBreaker` takes the
  lock only to read and change the state; in the closed state calls run concurrently.
  Open and half-open keep pybreaker's own serialized path, so half-open still lets
  one trial call through at a time.
- ``CircuitRedisStorage`` makes two to four Redis round trips per call (read the
  state, reset the counters). :class:`SharedStateStorage` keeps in Redis only what
  every gateway worker must agree on - the state and when the circuit opened - and
  reads it at most every ``refresh`` seconds; the count of consecutive failures is
  per process: a worker trips on its own evidence, then opens the circuit for all.

Keys and value formats are pybreaker's (``<namespace>:pybreaker:state``, ``opened_at``
as epoch seconds), so either implementation reads the other's state.
"""
from __future__ import annotations

import calendar
import logging
import threading
import time
from datetime import datetime, timezone

import pybreaker
import redis

logger = logging.getLogger(__name__)


class SharedStateStorage(pybreaker.CircuitBreakerStorage):
    """State and opening time in Redis (read through a short cache); counters in memory."""

    def __init__(self, client: redis.Redis, namespace: str, refresh: float = 0.25):
        super().__init__("redis-shared-state")
        self._redis = client
        self._state_key = f"{namespace}:{pybreaker.CircuitRedisStorage.BASE_NAMESPACE}:state"
        self._opened_key = f"{namespace}:{pybreaker.CircuitRedisStorage.BASE_NAMESPACE}:opened_at"
        self._refresh = refresh
        self._lock = threading.Lock()
        self._state = pybreaker.STATE_CLOSED
        self._opened_at: datetime | None = None
        self._read_at = float("-inf")
        self._failures = 0
        self._successes = 0

    def _load(self) -> None:
        now = time.monotonic()
        if now - self._read_at < self._refresh:
            return
        with self._lock:
            if now - self._read_at < self._refresh:
                return
            self._read_at = now
            try:
                state, opened = self._redis.mget(self._state_key, self._opened_key)
            except redis.RedisError as exc:
                # As pybreaker's storage does: without Redis the circuit counts as closed.
                logger.warning("breaker state unreadable; treating the circuit as closed",
                               extra={"error": type(exc).__name__})
                self._state = pybreaker.STATE_CLOSED
                return
            self._state = state.decode() if state else pybreaker.STATE_CLOSED
            self._opened_at = datetime.fromtimestamp(int(opened), timezone.utc) if opened else None

    def _write(self, key: str, value) -> None:
        try:
            self._redis.set(key, value)
        except redis.RedisError as exc:
            logger.warning("breaker state not shared", extra={"error": type(exc).__name__})

    @property
    def state(self) -> str:
        self._load()
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state
        self._read_at = time.monotonic()
        self._write(self._state_key, state)

    @property
    def opened_at(self) -> datetime | None:
        self._load()
        return self._opened_at

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._opened_at = when
        self._write(self._opened_key, calendar.timegm(when.timetuple()))

    def increment_counter(self) -> None:
        self._failures += 1

    def reset_counter(self) -> None:
        self._failures = 0

    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def counter(self) -> int:
        return self._failures

    @property
    def success_counter(self) -> int:
        return self._successes


class ConcurrentBreaker(pybreaker.CircuitBreaker):
    """A pybreaker breaker whose closed state does not serialize the protected calls."""

    def call(self, func, *args, **kwargs):
        with self._lock:
            state = self.state
        if state.name != pybreaker.STATE_CLOSED:
            return super().call(func, *args, **kwargs)
        # Closed-state calls outside the lock: read @32 ~200 -> ~365 req/s (README); guard: tests/test_library_guards.py
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            with self._lock:
                state._handle_error(exc)  # counts a system error, may open the circuit; re-raises
            raise
        with self._lock:
            state._handle_success()
        return result
