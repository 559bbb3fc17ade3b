"""The data layer through a real PgBouncer (Debian's, transaction pooling, a small pool).

A stack of its own - gateway, the four services and a Celery worker with beat - logs in
through PgBouncer with DATABASE_POOLER=pgbouncer, on a Redis of its own (no other
worker can take its tasks). Through it: an order end to end, and the concurrency test
of the order flow (200 orders for 50 units, never oversold). PgBouncer is shown to be
in the path: every pool-owning process of the stack holds connections to PgBouncer and none
to PostgreSQL itself, and PgBouncer shares fewer server connections among its clients.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import anyio
import asyncpg
import psutil
import pytest

from config import dburl
from config.settings import ConfigError
from devtools import embedded
from tests.conftest import Live, Worker
from tests.flow import test_order_flow as order_flow
from tests.support import Api, admin_token, register

POOL_SIZE = 2  # server connections per (database, role): fewer than each service's clients


@pytest.fixture(scope="module")
def pgbouncer(rt, settings, tmp_path_factory):
    """PgBouncer in front of the session's PostgreSQL; the roles exist (``rt`` migrated)."""
    from infra import roles

    if not os.path.isfile(embedded.PGBOUNCER_BINARY):
        pytest.fail(embedded.PGBOUNCER_MISSING)
    users = {role: None for role in roles.names(settings.role_prefix).values()}
    bouncer = embedded.start_pgbouncer(tmp_path_factory.mktemp("pgbouncer"), settings.database_url, users=users,
                                       pool_size=POOL_SIZE)
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def stack_redis(tmp_path_factory):
    server = embedded.start_redis(tmp_path_factory.mktemp("pgb-redis"), persistent=False)
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def pooled_env(base_env, pgbouncer, stack_redis, mail_sink, database_url):
    return {**base_env, "DATABASE_URL": pgbouncer.url_for(database_url), "DATABASE_POOLER": "pgbouncer",
            "MIGRATIONS_DATABASE_URL": database_url, "REDIS_URL": stack_redis, "SMTP_PORT": str(mail_sink.port),
            # Every client connection opened at start, so the sharing below is certain.
            "DB_POOL_MIN": "4", "DB_POOL_MAX": "4"}


@pytest.fixture(scope="module")
def pooled_stack(pooled_env):
    """gateway, users, inventory, orders (two gunicorn workers), notifications, worker + beat."""
    started = []
    try:
        users = Live("users", pooled_env, WEB_CONCURRENCY="1", GUNICORN_THREADS="4")
        started.append(users)
        inventory = Live("inventory", pooled_env, WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
        started.append(inventory)
        env = {**pooled_env, "USERS_URL": users.url, "INVENTORY_URL": inventory.url}
        orders = Live("orders", env, WEB_CONCURRENCY="2", GUNICORN_THREADS="8")
        started.append(orders)
        notifications = Live("notifications", env, WEB_CONCURRENCY="1", GUNICORN_THREADS="4")
        started.append(notifications)
        env = {**env, "ORDERS_URL": orders.url, "NOTIFICATIONS_URL": notifications.url}
        gateway = Live("gateway", env, WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
        started.append(gateway)
        started.append(Worker(env, beat=True, OUTBOX_SWEEP_SECONDS="1"))
        yield started
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def api(pooled_stack):
    return Api(next(p for p in pooled_stack if isinstance(p, Live) and p.name == "gateway").url)


@pytest.fixture(scope="module")
def admin(api):
    return admin_token(api)


def _database_peers(stack, *, pgbouncer_port: int, server_port: int | None) -> dict[str, Counter]:
    """TCP connections of the stack's processes (and their children) to PgBouncer and to the
    PostgreSQL server itself, by process name: read from the clients' side, so a process of
    another stack on the same database cannot blur it."""
    found = {"pgbouncer": Counter(), "server": Counter()}
    for started in stack:
        root = psutil.Process(started.pid)
        for proc in (root, *root.children(recursive=True)):
            try:
                connections = proc.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            for c in connections:
                if c.raddr and c.raddr.port == pgbouncer_port:
                    found["pgbouncer"][started.name] += 1
                elif c.raddr and server_port is not None and c.raddr.port == server_port:
                    found["server"][started.name] += 1
    return found


def _assert_through_pgbouncer(stack, pgbouncer, settings, database_url) -> None:
    """The stack talks to PgBouncer only, and PgBouncer shares its server connections."""
    from infra import roles

    direct = dburl.address(database_url)
    peers = _database_peers(stack, pgbouncer_port=dburl.address(pgbouncer.url_for(database_url)).port,
                            server_port=None if direct.unix_socket else direct.port)
    assert not peers["server"], f"connections straight to PostgreSQL: {peers['server']}"
    for name in ("gateway", "users", "orders", "inventory", "notifications", "worker"):
        assert peers["pgbouncer"][name] > 0, (name, peers)
    names = roles.names(settings.role_prefix)
    database = direct.database
    servers = [s for s in pgbouncer.show("SERVERS") if s["database"] == database]
    clients = [c for c in pgbouncer.show("CLIENTS") if c["database"] == database]
    by_role = Counter(c["user"] for c in clients), Counter(s["user"] for s in servers)
    for role in (names["orders"], names["inventory"], names["users"], names[roles.WORKER]):
        assert by_role[0][role] > 0, (role, by_role)
        assert by_role[1][role] <= POOL_SIZE, (role, by_role)
    # Two gunicorn workers of orders keep four connections each, over at most two of PgBouncer's.
    assert by_role[0][names["orders"]] >= 8 > POOL_SIZE >= by_role[1][names["orders"]], by_role
    stats = {s["database"]: s for s in pgbouncer.show("STATS")}
    assert int(stats[database]["total_xact_count"]) > 0, stats


def test_an_order_through_pgbouncer_is_reserved_and_fulfilled(api, admin, pooled_stack, pgbouncer, settings,
                                                              database_url):
    order_flow.test_an_order_is_reserved_then_fulfilled_and_stock_leaves(api, admin, register(api)["access_token"])
    _assert_through_pgbouncer(pooled_stack, pgbouncer, settings, database_url)


def test_200_concurrent_orders_through_pgbouncer_never_oversell(api, admin, rt, pooled_stack, pgbouncer, settings,
                                                               database_url):
    before = int({s["database"]: s for s in pgbouncer.show("STATS")}[
        dburl.database_name(database_url)]["total_xact_count"])
    order_flow.test_200_concurrent_orders_for_50_units_never_oversell(api, admin, rt)
    _assert_through_pgbouncer(pooled_stack, pgbouncer, settings, database_url)
    after = int({s["database"]: s for s in pgbouncer.show("STATS")}[dburl.database_name(database_url)]["total_xact_count"])
    assert after - before >= 200 * 3, (before, after)  # placement, reservation and outcome per order at least


def test_behind_pgbouncer_sessions_have_the_roles_defaults(pgbouncer, settings, database_url):
    """What a direct connection asks for at start is, behind PgBouncer, the login role's default."""
    from infra import roles

    url = roles.login_url(pgbouncer.url_for(database_url), roles.names(settings.role_prefix)["orders"])

    async def read():
        conn = await asyncpg.connect(url, statement_cache_size=0, timeout=10)
        try:
            return await conn.fetchrow(
                "SELECT current_setting('search_path') AS search_path, current_setting('jit') AS jit, "
                "(SELECT setting FROM pg_settings WHERE name = 'statement_timeout') AS statement_timeout, "
                "(SELECT setting FROM pg_settings WHERE name = 'lock_timeout') AS lock_timeout")
        finally:
            await conn.close()

    row = anyio.run(read)
    assert dict(row) == {"search_path": "pg_catalog", "jit": "off",
                         "statement_timeout": str(settings.db_statement_timeout_ms),
                         "lock_timeout": str(settings.db_lock_timeout_ms)}


def test_a_pool_without_the_pooler_setting_is_refused_by_pgbouncer(pgbouncer, settings, database_url):
    """Why DATABASE_POOLER exists: the startup parameters of a direct pool do not pass PgBouncer 1.18."""
    from infra import roles
    from infra.db import Database
    from infra.errors import Unavailable

    url = roles.login_url(pgbouncer.url_for(database_url), roles.names(settings.role_prefix)["orders"])
    db = Database(dsn=url, schemas=("orders",), min_size=1, max_size=1, timeout=5, application_name="oms-direct")
    with pytest.raises(Unavailable):  # logged: "unsupported startup parameter"
        db.start()
    db.close()
    pooled = Database(dsn=url, schemas=("orders",), min_size=1, max_size=1, timeout=5, application_name="oms-pooled",
                      pooler="pgbouncer").start()
    try:
        assert pooled.statement_cache_size == 0

        async def count(manager):
            return await manager.fetch_value("SELECT count(*) FROM {{tables.orders}}")

        assert [pooled.run(count, pooled.manager("orders")) >= 0 for _ in range(20)] == [True] * 20
    finally:
        pooled.close()


def test_migrations_behind_a_pooler_run_on_the_direct_url_only(settings, pgbouncer, database_url):
    from infra import migrations

    pooled = replace(settings, database_url=pgbouncer.url_for(database_url), database_pooler="pgbouncer")
    with pytest.raises(ConfigError, match="MIGRATIONS_DATABASE_URL"):
        migrations.migrate(pooled)
    assert migrations.migrate(replace(pooled, migrations_database_url=database_url), timeout=120)


def test_the_pgbouncer_of_make_run_is_found_by_its_folder(tmp_path, settings):
    """A PgBouncer left running in a data folder is stopped by `python -m devtools.embedded stop`."""
    bouncer = embedded.start_pgbouncer(tmp_path / "pgbouncer", settings.database_url, users={})
    assert bouncer.running and Path(tmp_path / "pgbouncer" / "pgbouncer.ini").exists()
    try:
        embedded.stop_in(tmp_path / "pgbouncer")
        embedded.launcher.wait_until(lambda: not bouncer.running, timeout=10, what="PgBouncer to stop")
    finally:
        bouncer.stop()
