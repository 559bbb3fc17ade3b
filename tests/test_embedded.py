"""Embedded PostgreSQL and Redis (devtools/embedded.py): data survives restarts, leftovers are handled, stop is safe."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis

from devtools import embedded


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
