"""Development tooling: embedded PostgreSQL and Redis (devtools/embedded.py) keep their data across
restarts, handle leftovers and stop safely; the launcher (devtools/launcher.py) leaves no process behind."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import asyncpg
import pytest
import redis

from devtools import embedded, launcher


def _sql(url: str, query: str, *args):
    async def run():
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def stops():
    """Servers a test started, stopped whatever the outcome."""
    started = []
    yield started
    for server in reversed(started):
        server.stop()


def test_postgres_keeps_its_data_across_a_restart(tmp_path, stops):
    pg = embedded.start_postgres(tmp_path / "pgdata", database="oms_check")
    stops.append(pg)
    assert pg.url.startswith("postgresql://postgres:@/oms_check?host=")
    _sql(pg.url, "CREATE TABLE kept (value text)")
    _sql(pg.url, "INSERT INTO kept VALUES ('still here')")

    pg.stop()
    assert not pg.running
    pg.stop()  # idempotent

    again = embedded.start_postgres(tmp_path / "pgdata", database="oms_check")
    stops.append(again)
    assert again.pid != pg.pid
    assert _sql(again.url, "SELECT value FROM kept") == "still here"


def test_postgres_left_running_by_an_earlier_run_is_reused(tmp_path, stops):
    first = embedded.start_postgres(tmp_path / "pgdata")
    stops.append(first)  # as if its owner had crashed: not stopped

    second = embedded.start_postgres(tmp_path / "pgdata")
    stops.append(second)

    assert second.pid == first.pid
    assert _sql(second.url, "SELECT current_database()") == "oms"


def test_redis_keeps_its_data_and_replaces_a_server_left_running(tmp_path, stops):
    first = embedded.start_redis(tmp_path / "redis")
    stops.append(first)
    assert first.url == f"unix://{tmp_path / 'redis' / 'redis.sock'}"
    redis.Redis.from_url(first.url).set("kept", "still here")

    second = embedded.start_redis(tmp_path / "redis")  # the first one was never stopped
    stops.append(second)

    assert not first.running
    assert second.pid != first.pid
    assert redis.Redis.from_url(second.url).get("kept") == b"still here"
    second.stop()
    second.stop()  # idempotent
    assert not second.running


def test_redis_without_persistence_writes_no_data_file(tmp_path, stops):
    server = embedded.start_redis(tmp_path / "redis", persistent=False)
    stops.append(server)
    redis.Redis.from_url(server.url).set("gone", "soon")
    server.stop()

    leftovers = {p.name for p in (tmp_path / "redis").iterdir()} - {"redis.conf", "redis.log"}
    assert leftovers == set()


def test_redis_in_a_folder_too_deep_for_a_unix_socket_still_starts(tmp_path, stops):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "redis"
    server = embedded.start_redis(deep, persistent=False)
    stops.append(server)

    assert len(server.url) - len("unix://") <= 107
    assert redis.Redis.from_url(server.url).ping()


def test_redis_that_cannot_start_says_why(tmp_path):
    (tmp_path / "redis" / "appendonly.aof").mkdir(parents=True)  # a folder where Redis wants its file

    with pytest.raises(embedded.EmbeddedError, match="(?s)exited.*append"):
        embedded.start_redis(tmp_path / "redis")


def test_a_stopped_process_takes_its_whole_group_with_it(tmp_path):
    # A shell deaf to SIGTERM, with a child (deaf too) that would outlive it.
    proc = launcher.Process(["/bin/sh", "-c", "trap '' TERM; sleep 300 & echo started; wait"], log=tmp_path / "log")
    launcher.wait_until(lambda: len(launcher.group_members(proc.pid)) == 2, timeout=10, what="both processes")

    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert launcher.group_members(proc.pid) == []


def test_waiting_for_a_process_that_exits_fails_at_once_quoting_its_log(tmp_path):
    proc = launcher.Process(["/bin/sh", "-c", "echo no configuration here; exit 3"], log=tmp_path / "log")

    with pytest.raises(RuntimeError, match="exited \\(3\\).*\n.*no configuration here"):
        proc.wait_ready(lambda: False, timeout=60, what="readiness")


def test_a_child_started_to_die_with_its_parent_does():
    code = ("import time; from devtools import launcher; "
            "print(launcher.Process(['sleep', '300'], die_with_parent=True).pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=launcher.ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert launcher.alive(child)

    parent.kill()
    parent.wait()

    launcher.wait_until(lambda: not launcher.alive(child), timeout=10, what="the child's end")
