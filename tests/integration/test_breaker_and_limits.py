"""The two places where the gateway changes how its libraries talk to Redis (real Redis).

infra/breaker.py: calls through a closed breaker run concurrently (pybreaker's own
breaker runs them one at a time), failures still open the circuit, and the opened state
is shared through Redis. app/gateway/limits.py: the window flask-limiter reads for its
headers comes from the hit itself, with the same figures Redis holds.
"""
from __future__ import annotations

import threading
import time

import pybreaker
import pytest
import redis

from app.gateway.limits import HitRedisStorage, _storage_uri
from infra.breaker import ConcurrentBreaker, SharedStateStorage


@pytest.fixture
def client(own_redis):
    client = redis.Redis.from_url(own_redis)
    yield client
    client.close()


def _breaker(client, **kwargs) -> ConcurrentBreaker:
    return ConcurrentBreaker(fail_max=2, reset_timeout=30, exclude=[KeyError],
                             state_storage=SharedStateStorage(client, "test:breaker", refresh=0.0), **kwargs)


def test_calls_through_a_closed_breaker_run_concurrently(client):
    breaker = _breaker(client)
    inside = threading.Barrier(4, timeout=2)  # only passes if four calls are inside at once
    results = []
    threads = [threading.Thread(target=lambda: results.append(breaker.call(inside.wait))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(results) == 4


def test_failures_open_the_circuit_for_every_process_and_excluded_errors_do_not(client):
    breaker, other = _breaker(client), _breaker(client)

    def fail(exc):
        raise exc

    for _ in range(3):
        with pytest.raises(KeyError):
            breaker.call(fail, KeyError("a business error"))
    assert breaker.current_state == pybreaker.STATE_CLOSED

    with pytest.raises(OSError):
        breaker.call(fail, OSError("down"))
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(fail, OSError("down"))
    assert client.get("test:breaker:pybreaker:state") == b"open"
    assert client.get("test:breaker:pybreaker:opened_at") is not None
    # Another process's breaker refuses at once, without calling.
    called = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        other.call(called.append, 1)
    assert called == [] and other._state_storage.opened_at is not None


def test_a_success_resets_the_count_of_consecutive_failures(client):
    breaker = _breaker(client)
    with pytest.raises(OSError):
        breaker.call(lambda: (_ for _ in ()).throw(OSError("down")))
    assert breaker.call(lambda: "ok") == "ok"
    with pytest.raises(OSError):
        breaker.call(lambda: (_ for _ in ()).throw(OSError("down")))
    assert breaker.current_state == pybreaker.STATE_CLOSED


def test_without_redis_the_circuit_counts_as_closed():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    breaker = ConcurrentBreaker(fail_max=2, state_storage=SharedStateStorage(dead, "x", refresh=0.0))
    assert breaker.call(lambda: 7) == 7


def test_the_limiter_hit_answers_the_window_that_redis_holds(client, own_redis):
    storage = HitRedisStorage(_storage_uri(own_redis))
    assert storage.incr("k", 60) == 1 and storage.incr("k", 60) == 2
    cached_count, cached_expiry = storage.get("k"), storage.get_expiry("k")
    # Read once: the next reads go to Redis, and agree.
    assert (cached_count, round(cached_expiry)) == (storage.get("k"), round(storage.get_expiry("k")))
    assert cached_count == 2 and 58 <= cached_expiry - time.time() <= 60
    assert int(client.get("LIMITS:k")) == 2 and 0 < client.ttl("LIMITS:k") <= 60
