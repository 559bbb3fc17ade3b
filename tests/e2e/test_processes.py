"""The real processes: graceful stop, failure answers, connections, migrations, config."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter

import anyio
import asyncpg
import pytest
import urllib3

from tests.conftest import BIN, PYTHON, ROOT, Live, drop_database, free_port, new_database


def _register(base: str, http=None) -> dict:
    http = http or urllib3.PoolManager()
    r = http.request(
        "POST", base + "/api/users",
        body=json.dumps({"email": f"load-{uuid.uuid4().hex[:10]}@example.com", "name": "L", "password": "long enough"}),
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 201, r.data
    return json.loads(r.data)


REFUSED = "refused"


def _get(http: urllib3.PoolManager, url: str, **kwargs) -> int | str:
    """The status of one GET, or ``REFUSED`` when no connection could be made.

    Only a connection that was never made counts as refused: once it is made and the
    request sent, a reset, a close without an answer or a timeout raises, as any client
    would see it: a request the server dropped.
    """
    try:
        return http.request("GET", url, retries=False, timeout=10, **kwargs).status
    except urllib3.exceptions.NewConnectionError:  # ConnectionRefusedError & co., before sending
        return REFUSED


def test_a_request_dropped_after_it_was_sent_is_not_counted_as_refused():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def read_then_drop():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    dropper = threading.Thread(target=read_then_drop, daemon=True)
    dropper.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        with pytest.raises(urllib3.exceptions.ProtocolError):
            _get(urllib3.PoolManager(), url)
    finally:
        dropper.join(5)
        listener.close()
    assert _get(urllib3.PoolManager(), url) == REFUSED  # nothing listens any more


def test_sigterm_under_load_fails_no_accepted_request(rt, base_env):
    server = Live("users", base_env, WEB_CONCURRENCY="2", GUNICORN_THREADS="8", DB_POOL_MAX="2")
    try:
        token = _register(server.url)["access_token"]
        statuses: Counter = Counter()
        dropped: list[str] = []
        stop = threading.Event()

        def load():
            http = urllib3.PoolManager(maxsize=1)
            while not stop.is_set():
                try:
                    status = _get(http, server.url + "/api/users/me", headers={"Authorization": f"Bearer {token}"})
                except urllib3.exceptions.HTTPError as exc:  # sent, then dropped
                    dropped.append(repr(exc))
                    status = None
                if status in (REFUSED, None):
                    time.sleep(0.01)
                else:
                    statuses[status] += 1

        threads = [threading.Thread(target=load, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            served_before = sum(statuses.values())
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(30) == 0, server.log()[-3000:]
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert served_before > 50
        assert not dropped, (len(dropped), dropped[:5])
        assert set(statuses) == {200}, (statuses, server.log()[-3000:])
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_database_outage_answers_503_not_500(rt, base_env):
    server = Live(
        "users", base_env, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nothing",
        WEB_CONCURRENCY="1", DB_TIMEOUT_SECONDS="1",
    )
    try:
        http = urllib3.PoolManager()
        r = http.request(
            "POST", server.url + "/api/users",
            body=json.dumps({"email": "x@example.com", "name": "X", "password": "long enough"}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status == 503 and r.headers["Content-Type"] == "application/problem+json"
        assert r.headers.get("Retry-After")
        ready = http.request("GET", server.url + "/ready")
        assert ready.status == 503 and "postgres" in json.loads(ready.data)["failed"]
        assert http.request("GET", server.url + "/health").status == 200
    finally:
        server.stop()


def test_gateway_upstream_down_is_503_and_timeout_is_504(rt, base_env):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    dead_port = free_port()
    http = urllib3.PoolManager()
    body = json.dumps({"email": "a@b.io", "password": "whatever1"})
    headers = {"Content-Type": "application/json"}
    down = Live("gateway", base_env, USERS_URL=f"http://127.0.0.1:{dead_port}", WEB_CONCURRENCY="1")
    try:
        r = http.request("POST", down.url + "/api/auth/login", body=body, headers=headers)
        assert r.status == 503 and json.loads(r.data)["status"] == 503
        assert http.request("GET", down.url + "/ready").status == 503
    finally:
        down.stop()
    slow = Live(
        "gateway", base_env, USERS_URL=f"http://127.0.0.1:{silent.getsockname()[1]}",
        UPSTREAM_READ_TIMEOUT_SECONDS="0.5", WEB_CONCURRENCY="1",
    )
    try:
        r = http.request("POST", slow.url + "/api/auth/login", body=body, headers=headers)
        assert r.status == 504 and r.headers["Content-Type"] == "application/problem+json"
    finally:
        slow.stop()
        silent.close()


def test_a_saturated_upstream_is_refused_fast_with_retry_after_and_the_breaker_counts_none_of_it(rt, base_env):
    """One request holds the bulkhead of a silent upstream; the others are answered 503 with
    Retry-After within the wait, not after the read timeout, and none of them counts toward
    the breaker: the next request after the first timed out still reaches the upstream."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts connections, never answers
    body = json.dumps({"email": "a@b.io", "name": "A", "password": "long enough"})
    headers = {"Content-Type": "application/json"}
    gateway = Live("gateway", base_env, USERS_URL=f"http://127.0.0.1:{silent.getsockname()[1]}",
                   UPSTREAM_READ_TIMEOUT_SECONDS="3", GATEWAY_UPSTREAM_CONCURRENCY="1",
                   GATEWAY_UPSTREAM_WAIT_SECONDS="0.2", GATEWAY_BREAKER_FAIL_MAX="3", WEB_CONCURRENCY="1")
    try:
        http = urllib3.PoolManager(maxsize=4)
        holder: list = []
        held = threading.Thread(target=lambda: holder.append(
            http.request("POST", gateway.url + "/api/users", body=body, headers=headers)))
        held.start()
        time.sleep(0.5)  # it is waiting on the upstream now
        refused = []
        for _ in range(6):  # twice the breaker's threshold
            started = time.monotonic()
            r = http.request("POST", gateway.url + "/api/users", body=body, headers=headers)
            refused.append((r.status, int(r.headers.get("Retry-After", "0")) >= 1, json.loads(r.data)["detail"],
                            time.monotonic() - started < 2.5))
        held.join(10)
        assert refused == [(503, True, "the users service is busy, retry shortly", True)] * 6
        assert holder[0].status == 504
        # Closed still: this one waits on the upstream again rather than meeting an open circuit.
        r = http.request("POST", gateway.url + "/api/users", body=body, headers=headers)
        assert r.status == 504, r.data
    finally:
        gateway.stop()
        silent.close()


async def _connections(url: str, app_prefix: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1",
            app_prefix + "%",
        )
    finally:
        await conn.close()


def test_idle_processes_hold_exactly_their_pool_minimums(rt, base_env, database_url):
    # Own names, so the session's other live processes are not counted.
    users = Live("users", base_env, SERVICE_NAME="idle-users", WEB_CONCURRENCY="2", DB_POOL_MIN="1",
                 DB_POOL_MAX="4")
    gateway = Live("gateway", base_env, SERVICE_NAME="idle-gateway", USERS_URL=users.url,
                   GATEWAY_SERVICES="users", WEB_CONCURRENCY="1", DB_POOL_MIN="1")
    try:
        time.sleep(1.0)
        # 2 users workers x 1 + 1 gateway worker x 1
        assert anyio.run(_connections, database_url, "oms-idle-users") == 2
        assert anyio.run(_connections, database_url, "oms-idle-gateway") == 1
    finally:
        gateway.stop()
        users.stop()


def _migrate(env) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "app", "migrate"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_migrations_run_twice_and_concurrently(servers, base_env):
    server_url = servers[0]
    url = new_database(server_url, prefix="oms_migrate")
    try:
        env = {**base_env, "DATABASE_URL": url}
        procs = [_migrate(env) for _ in range(3)]
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outputs
        again = _migrate(env)
        assert again.wait(120) == 0

        async def applied():
            conn = await asyncpg.connect(url)
            try:
                rows = await conn.fetch(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'schema_migrations'"
                )
                counts = {}
                for row in rows:
                    schema = row["table_schema"]
                    counts[schema] = await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations')
                return counts
            finally:
                await conn.close()

        counts = anyio.run(applied)
        expected = {
            schema: len(list((ROOT / "migrations" / folder).glob("*.sql")))
            for schema, folder in [("public", "shared"), ("users", "users"), ("orders", "orders"),
                                   ("inventory", "inventory"), ("notifications", "notifications")]
        }
        assert counts == expected
    finally:
        drop_database(server_url, url)


def test_migrate_creates_a_missing_database(servers, base_env):
    server_url = servers[0]
    from config.dburl import with_database

    url = with_database(server_url, f"oms_fresh_{uuid.uuid4().hex[:8]}")
    try:
        assert _migrate({**base_env, "DATABASE_URL": url}).wait(120) == 0
    finally:
        drop_database(server_url, url)


@pytest.mark.parametrize("missing", ["JWT_SECRET_KEY", "DATABASE_URL", "REDIS_URL"])
def test_production_without_a_secret_stops_with_one_line_naming_it(base_env, missing):
    env = {**base_env, "APP_ENV": "production", "JWT_SECRET_KEY": "s" * 40}
    env.pop(missing)
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "--check-config", "app.wsgi:users"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    cli = subprocess.run([PYTHON, "-m", "app", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0
    lines = [line for line in cli.stderr.splitlines() if line.strip()]
    assert lines == [f"configuration error: {missing} must be set when APP_ENV=production"]
    assert result.returncode != 0 and missing in result.stderr + result.stdout
