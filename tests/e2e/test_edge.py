"""The gateway as operators see it: registry and spreading, breakers, rate limits,
the merged OpenAPI document, metrics; and RabbitMQ as an alternative broker."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
import redis

from tests.conftest import PYTHON, ROOT, Live, Worker, drop_database, free_port, new_database
from tests.support import Api, create_product, new_email, place, register, wait_for, wait_terminal


@pytest.fixture
def private_db(servers, base_env):
    """A database of this test's own (its own registry), migrated."""
    url = new_database(servers[0], prefix="oms_edge")
    env = {**base_env, "DATABASE_URL": url}
    assert subprocess.run([PYTHON, "-m", "app", "migrate"], cwd=ROOT, env=env, capture_output=True).returncode == 0
    yield env
    drop_database(servers[0], url)


def _served(server: Live, path: str) -> int:
    return len(re.findall(rf"path={re.escape(path)} ", server.log()))


def test_two_instances_share_traffic_and_a_killed_one_is_dropped_without_failed_gets(private_db, own_redis):
    env = {**private_db, "REDIS_URL": own_redis, "REGISTRY_ENABLED": "1",
           "REGISTRY_HEARTBEAT_SECONDS": "0.5", "REGISTRY_TTL_SECONDS": "2", "LOG_LEVEL": "INFO"}
    a = Live("users", env, REGISTRY_ENABLED="1")
    b = Live("users", env, REGISTRY_ENABLED="1")
    gateway = Live("gateway", env, REGISTRY_ENABLED="1", GATEWAY_SERVICES="users",
                   USERS_URL=f"http://127.0.0.1:{free_port()}")  # nothing there: only the registry helps
    try:
        api = Api(gateway.url)
        wait_for(lambda: api.call("GET", "/health")[0] == 200)
        time.sleep(1.5)  # both heartbeats seen
        token = register(api)["access_token"]
        for _ in range(40):
            assert api.call("GET", "/api/users/me", token=token)[0] == 200
        assert _served(a, "/api/users/me") > 5 and _served(b, "/api/users/me") > 5
        os.killpg(a.proc.pid, signal.SIGKILL)  # no goodbye: the registry must notice by itself
        a.proc.wait()
        statuses = [api.call("GET", "/api/users/me", token=token)[0] for _ in range(40)]
        assert set(statuses) == {200}, statuses
        time.sleep(2.5)
        before = _served(b, "/api/users/me")
        for _ in range(20):
            assert api.call("GET", "/api/users/me", token=token)[0] == 200
        assert _served(b, "/api/users/me") - before == 20  # all of it on the survivor

        email = new_email()
        subprocess.run([PYTHON, "-m", "app", "create-admin", "--email", email, "--password", "admin password"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        admin = api.ok("POST", "/api/auth/login", json_body={"email": email, "password": "admin password"})
        listed = api.ok("GET", "/api/services", token=admin["access_token"])["items"]
        users = {i["url"]: i["status"] for i in listed if i["service"] == "users"}
        assert users.get(b.url) == "up" and users.get(a.url, "stale") == "stale"
        assert any(i["service"] == "gateway" for i in listed)
        status, _, problem = api.call("GET", "/api/services", token=token)
        assert status == 403 and problem["status"] == 403
    finally:
        gateway.stop()
        b.stop()
        a.stop()


def test_an_open_breaker_answers_503_with_retry_after_at_once_for_every_gateway_worker(base_env, own_redis):
    gateway = Live("gateway", base_env, REDIS_URL=own_redis, WEB_CONCURRENCY="2", GATEWAY_SERVICES="users",
                   USERS_URL=f"http://127.0.0.1:{free_port()}", GATEWAY_BREAKER_FAIL_MAX="3",
                   GATEWAY_BREAKER_RESET_SECONDS="30")
    try:
        api = Api(gateway.url)
        body = {"email": "a@b.io", "password": "whatever1"}
        for _ in range(3):
            assert api.call("POST", "/api/auth/login", json_body=body)[0] == 503
        assert redis.Redis.from_url(own_redis).get("oms:breaker:users:pybreaker:state") == b"open"
        for _ in range(6):  # whichever worker answers, the circuit is open for it
            started = time.monotonic()
            status, headers, problem = api.call("POST", "/api/auth/login", json_body=body)
            # flask-limiter raises Retry-After to its own window reset when that is later.
            assert status == 503 and problem["status"] == 503 and int(headers["Retry-After"]) >= 1
            assert time.monotonic() - started < 0.2
    finally:
        gateway.stop()


def test_rate_limits_answer_429_with_headers_and_login_has_its_own(stack_env, own_redis, live_gateway):
    gateway = Live("gateway", {**stack_env, "REDIS_URL": own_redis},
                   RATE_LIMIT_DEFAULT="5/minute", RATE_LIMIT_LOGIN="2/minute", GATEWAY_SERVICES="users",
                   USERS_URL=stack_env["USERS_URL"], INVENTORY_URL=stack_env["INVENTORY_URL"])
    try:
        api = Api(gateway.url)
        statuses = []
        for _ in range(6):
            status, headers, body = api.call("GET", "/api/inventory/products")
            statuses.append(status)
            assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(headers)
        assert statuses == [200] * 5 + [429]
        assert body["status"] == 429 and headers["Content-Type"] == "application/problem+json"
        assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Remaining"] == "0"

        # Logged-in users have buckets of their own (per user, not per IP).
        user = register(Api(live_gateway.url))
        assert api.call("GET", "/api/users/me", token=user["access_token"])[0] == 200

        login = {"email": new_email(), "password": "wrong password"}
        assert [api.call("POST", "/api/auth/login", json_body=login, token=user["access_token"])[0]
                for _ in range(3)] == [401, 401, 429]
        other = {"email": new_email(), "password": "wrong password"}
        assert api.call("POST", "/api/auth/login", json_body=other, token=user["access_token"])[0] == 401
    finally:
        gateway.stop()


API_MD_ROUTES = [
    ("post", "/api/users"), ("post", "/api/auth/login"), ("post", "/api/auth/refresh"),
    ("post", "/api/auth/logout"), ("get", "/api/users/me"), ("patch", "/api/users/me"),
    ("get", "/api/inventory/products"), ("get", "/api/inventory/products/{product_id}"),
    ("post", "/api/inventory/products"), ("patch", "/api/inventory/products/{product_id}"),
    ("post", "/api/inventory/products/{product_id}/stock"), ("post", "/api/orders"), ("get", "/api/orders"),
    ("get", "/api/orders/{order_id}"), ("post", "/api/orders/{order_id}/cancel"),
    ("get", "/api/notifications"), ("get", "/api/services"),
]


def test_the_merged_openapi_document_lists_the_public_api_and_nothing_else(live_gateway, settings):
    from app import create_app

    api = Api(live_gateway.url)
    document = api.ok("GET", "/api/openapi.json")
    assert document["openapi"].startswith("3.")
    documented = {(method, path) for path, item in document["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    missing = set(API_MD_ROUTES) - documented
    assert not missing, missing
    # Every documented operation is served by some process.
    served = set()
    for service in ("gateway", "users", "orders", "inventory", "notifications"):
        for rule in create_app(service, settings).url_map.iter_rules():
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            served |= {(m.lower(), path) for m in rule.methods}
    assert documented <= served, documented - served
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)):
        assert ref in document["components"]["schemas"]
    status, headers, _ = api.call("GET", "/api/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")


def test_gateway_metrics_count_requests_as_traffic_grows(live_gateway):
    api = Api(live_gateway.url)

    def count() -> float:
        text = api.http.request("GET", live_gateway.url + "/metrics").data.decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("http_requests_total{") and 'service="gateway"' in line)

    before = count()
    for _ in range(5):
        api.call("GET", "/api/inventory/products")
    assert count() >= before + 5
    text = api.http.request("GET", live_gateway.url + "/metrics").data.decode()
    for name in ("http_request_duration_seconds_bucket", "db_pool_connections", "dead_letters"):
        assert name in text


def _rabbitmq_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbitmq_reachable(), reason="no RabbitMQ at 127.0.0.1:5672")
def test_an_order_runs_end_to_end_on_rabbitmq(rt, stack_env, live_gateway):
    from tests.support import admin_token

    broker = "amqp://guest:guest@127.0.0.1:5672//"
    env = {**stack_env, "CELERY_BROKER_URL": broker}
    subprocess.run([str(ROOT / ".venv/bin/celery"), "-A", "workers.celery_app:app", "purge", "-f",
                    "-Q", "default,inventory,orders,notifications,outbox"], cwd=ROOT, env=env, capture_output=True)
    orders = Live("orders", env)
    worker = Worker(env, concurrency=2)
    try:
        gateway_api = Api(live_gateway.url)
        product = create_product(gateway_api, admin_token(gateway_api), stock=2)
        customer = register(gateway_api)["access_token"]
        api = Api(orders.url)
        order = place(api, customer, [(product["id"], 1)])
        assert wait_terminal(api, customer, order["id"], timeout=60)["status"] == "fulfilled", worker.log()[-2000:]
    finally:
        worker.stop()
        orders.stop()
