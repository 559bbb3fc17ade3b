"""/ready and /metrics for internal networks only; /health for everyone; readiness cached.

The client is the socket peer (REMOTE_ADDR). X-Forwarded-For counts only when the peer
is a configured trusted proxy, and then the nearest address that is not one.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import replace

import pytest
import urllib3

from app import create_app
from tests.conftest import Live

INTERNAL = ["127.0.0.1", "10.2.3.4", "172.20.0.9", "192.168.1.1", "::1", "fd00::7", "::ffff:10.0.0.1"]
EXTERNAL = ["203.0.113.9", "172.32.0.1", "8.8.8.8", "2001:db8::1", "::ffff:203.0.113.9"]


def nets(*names: str) -> tuple:
    return tuple(ipaddress.ip_network(n) for n in names)


def client_for(settings, **changes):
    return create_app("users", replace(settings, **changes)).test_client()


def get(client, path: str, remote: str, **headers):
    return client.get(path, environ_base={"REMOTE_ADDR": remote}, headers=headers)


@pytest.fixture(scope="module")
def client(rt, settings):
    return client_for(settings)


@pytest.mark.parametrize("remote", INTERNAL)
def test_internal_clients_get_ready_and_metrics(client, remote):
    ready = get(client, "/ready", remote)
    assert ready.status_code == 200 and ready.json["checks"]["postgres"] == "ok"
    metrics = get(client, "/metrics", remote)
    assert metrics.status_code == 200 and b"http_requests_total" in metrics.data


@pytest.mark.parametrize("remote", EXTERNAL)
def test_other_clients_get_the_404_of_a_path_that_does_not_exist(client, remote):
    unknown = get(client, "/no-such-path", remote)
    for path in ("/ready", "/metrics"):
        r = get(client, path, remote)
        assert r.status_code == 404 and r.mimetype == "application/problem+json"
        assert r.json == unknown.json
    health = get(client, "/health", remote)
    assert health.status_code == 200 and health.json["status"] == "ok"


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(client):
    assert get(client, "/ready", "203.0.113.9", **{"X-Forwarded-For": "10.0.0.1"}).status_code == 404
    # An internal peer stays the client, whatever it claims to forward.
    assert get(client, "/ready", "10.0.0.8", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 200


def test_behind_a_trusted_proxy_the_client_is_the_nearest_untrusted_address(rt, settings):
    client = client_for(settings, trusted_proxies=nets("10.0.0.5/32", "10.0.1.0/24"))
    proxy = "10.0.0.5"

    def status(forwarded: str | None, peer: str = proxy) -> int:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        return get(client, "/ready", peer, **headers).status_code

    assert status("203.0.113.9") == 404  # an internet client behind our private proxy
    assert status("10.9.9.9, 203.0.113.9") == 404  # a private address it made up is not believed
    assert status("203.0.113.9, 10.0.1.7") == 404  # a chain of our own proxies is walked back
    assert status("192.168.1.9") == 200  # an internal client behind the proxy
    assert status("203.0.113.9, 192.168.1.9") == 200
    assert status(None) == 200  # the proxy itself
    assert status("not an address") == 404
    assert status("203.0.113.9", peer="10.0.0.6") == 200  # not a trusted proxy: its own address counts


def test_an_empty_allow_list_closes_both_to_everyone_but_not_health(rt, settings):
    client = client_for(settings, ops_allowed_networks=())
    assert get(client, "/ready", "127.0.0.1").status_code == 404
    assert get(client, "/metrics", "127.0.0.1").status_code == 404
    assert get(client, "/health", "127.0.0.1").status_code == 200


def test_the_allow_list_holds_over_a_real_socket_on_the_gateway(base_env):
    gateway = Live("gateway", base_env, OPS_ALLOWED_NETWORKS="10.0.0.0/8,fc00::/7", WEB_CONCURRENCY="1")
    try:
        http = urllib3.PoolManager(retries=False)
        for path in ("/ready", "/metrics"):
            r = http.request("GET", gateway.url + path)
            assert r.status == 404 and r.headers["Content-Type"].startswith("application/problem+json")
            assert b"postgres" not in r.data and b"upstream" not in r.data
        assert http.request("GET", gateway.url + "/health").status == 200
    finally:
        gateway.stop()


# -- the readiness cache -----------------------------------------------------------------
class Counted:
    def __init__(self, *, pause: float = 0.0, fail: bool = False):
        self.calls, self.pause, self.fail = 0, pause, fail
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        time.sleep(self.pause)
        if self.fail:
            from infra.errors import Unavailable

            raise Unavailable("the probe is down")


def counted_app(rt, settings, check: Counted, seconds: float):
    app = create_app("users", replace(settings, ready_cache_seconds=seconds))
    app.extensions["readiness"].checks["probe"] = check
    return app


def test_a_flood_of_ready_runs_the_checks_once_per_cache_period(rt, settings):
    check = Counted()
    client = counted_app(rt, settings, check, 0.5).test_client()
    for _ in range(30):
        r = client.get("/ready")
        assert r.status_code == 200 and r.json["checks"]["probe"] == "ok"
    assert check.calls == 1
    time.sleep(0.6)
    assert client.get("/ready").status_code == 200
    assert check.calls == 2


def test_concurrent_ready_requests_share_one_run_of_the_checks(rt, settings):
    check = Counted(pause=0.3)
    app = counted_app(rt, settings, check, 5.0)
    statuses = []
    start = threading.Barrier(12)

    def ask():
        c = app.test_client()
        start.wait()
        statuses.append(c.get("/ready").status_code)

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert statuses == [200] * 12 and check.calls == 1


def test_a_failed_readiness_is_cached_too_and_says_which_check_failed(rt, settings):
    check = Counted(fail=True)
    client = counted_app(rt, settings, check, 5.0).test_client()
    for _ in range(5):
        r = client.get("/ready")
        assert r.status_code == 503 and r.json["failed"] == ["probe"]
    assert check.calls == 1


def test_clients_outside_the_allow_list_do_not_run_the_checks(rt, settings):
    check = Counted()
    client = counted_app(rt, settings, check, 0.0).test_client()
    for _ in range(5):
        assert get(client, "/ready", "203.0.113.9").status_code == 404
    assert check.calls == 0
