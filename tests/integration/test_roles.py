"""Least privilege in the database: one role per domain schema, enforced by PostgreSQL.

A process serving one domain logs in as that domain's role; one serving several (a
Celery worker, the CLI, this test process) logs in as the worker role and acts as a
domain's role only inside that domain's manager, one transaction at a time.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import anyio
import asyncpg
import pytest
from pgdbm.errors import QueryError

from config.settings import SCHEMAS
from infra import migrations, roles
from infra.db import Database, SuperuserRefused

# A table of each domain schema (every schema also has an outbox or inbox of the same name).
TABLE = {"users": "users", "orders": "orders", "inventory": "products", "notifications": "notifications"}


async def _fetchval(url: str, sql: str, *args):
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def fetchval(url: str, sql: str, *args):
    return anyio.run(_fetchval, url, sql, *args)


def login(settings, kind: str) -> str:
    return roles.login(settings, kind).dsn


def refused(url: str, sql: str, *args) -> bool:
    try:
        fetchval(url, sql, *args)
    except asyncpg.InsufficientPrivilegeError:
        return True
    return False


@pytest.mark.parametrize("schema", SCHEMAS)
def test_each_domain_role_uses_its_own_schema_and_is_refused_the_others(rt, settings, schema):
    url = login(settings, schema)
    assert fetchval(url, "SELECT current_user") == settings.role_prefix + schema
    assert fetchval(url, f'SELECT count(*) FROM "{schema}".{TABLE[schema]}') >= 0
    for other in SCHEMAS:
        if other != schema:
            assert refused(url, f'SELECT count(*) FROM "{other}".{TABLE[other]}'), other
    # Not even the migrations' bookkeeping of its own schema, nor the dead letters.
    assert refused(url, f'SELECT count(*) FROM "{schema}".schema_migrations')
    assert refused(url, "SELECT count(*) FROM public.dead_letters")


def test_the_gateway_role_reads_the_registry_and_counts_dead_letters_only(rt, settings):
    url = login(settings, roles.GATEWAY)
    for schema in SCHEMAS:
        assert refused(url, f'SELECT count(*) FROM "{schema}".{TABLE[schema]}'), schema
    assert fetchval(url, "SELECT count(*) FROM public.service_registry") >= 0
    assert fetchval(url, "SELECT count(*) FILTER (WHERE redriven_at IS NULL) FROM public.dead_letters") >= 0
    assert refused(url, "SELECT count(*) FROM public.dead_letters WHERE kwargs::text LIKE '%@%'")


def test_the_worker_login_alone_reads_no_domain_table(rt, settings):
    url = login(settings, roles.WORKER)
    for schema in SCHEMAS:
        assert refused(url, f'SELECT count(*) FROM "{schema}".{TABLE[schema]}'), schema
    assert refused(url, "SELECT count(*) FROM public.service_registry")
    assert fetchval(url, "SELECT count(*) FROM public.dead_letters") >= 0


def test_a_worker_transaction_for_orders_cannot_read_users(rt, settings):
    async def peek(orders):
        async with orders.transaction() as tx:
            assert await tx.fetch_value("SELECT current_user") == settings.role_prefix + "orders"
            await tx.fetch_value("SELECT count(*) FROM {{tables.orders}}")
            return await tx.fetch_value("SELECT count(*) FROM {{tables.users.users}}")

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        rt.db.run(peek, rt.db.manager("orders"))
    with pytest.raises(QueryError) as caught:
        rt.db.run(rt.db.manager("orders").fetch_value, "SELECT count(*) FROM {{tables.users.users}}")
    assert isinstance(caught.value.__cause__, asyncpg.InsufficientPrivilegeError)


async def _every_call(db):
    """current_user as seen by each way pgdbm's manager runs SQL."""
    seen = {
        "fetch_value": await db.fetch_value("SELECT current_user"),
        "fetch_one": (await db.fetch_one("SELECT current_user AS u"))["u"],
        "fetch_all": (await db.fetch_all("SELECT current_user AS u"))[0]["u"],
    }
    # These return no rows: that they may read the schema's outbox at all is the proof.
    await db.execute("SELECT 1 FROM {{tables.outbox}} LIMIT 0")
    await db.executemany("SELECT 1 FROM {{tables.outbox}} WHERE $1::int > 0 LIMIT 0", [(1,), (2,)])
    async with db.transaction() as tx:
        seen["transaction"] = await tx.fetch_value("SELECT current_user")
        async with tx.transaction() as nested:
            seen["savepoint"] = await nested.fetch_value("SELECT current_user")
    return seen


def test_every_call_of_a_switching_manager_acts_as_its_schemas_role(rt, settings):
    # Guards the one pgdbm internal we rely on: its single-statement methods take their
    # connection from the manager's acquire(), which is where the role is set.
    seen = rt.db.run(_every_call, rt.db.manager("inventory"))
    assert set(seen.values()) == {settings.role_prefix + "inventory"}, seen


def test_a_nested_savepoint_rolls_back_alone_under_a_switched_role(rt):
    marker = f"test.savepoint.{uuid.uuid4().hex}"

    async def write(db):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO {{tables.outbox}} (event_type, payload) VALUES ($1, '{}')", marker)
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with tx.transaction() as nested:
                    await nested.execute("INSERT INTO {{tables.outbox}} (event_type, payload) VALUES ($1, '{}')",
                                         marker + ".inner")
                    await nested.execute("SELECT 1 / 0")
        return await db.fetch_all(
            "SELECT event_type FROM {{tables.outbox}} WHERE event_type LIKE $1", marker + "%")

    rows = rt.db.run(write, rt.db.manager("inventory"))
    assert [r["event_type"] for r in rows] == [marker]


def _worker_database(settings, **overrides) -> Database:
    login_ = roles.login(settings, roles.WORKER)
    options = dict(dsn=login_.dsn, schemas=SCHEMAS + ("public",), min_size=1, max_size=1, timeout=5.0,
                   application_name="oms-test-roles", switch_roles=login_.switch)
    options.update(overrides)
    return Database(**options).start()


def test_a_role_switch_ends_with_its_transaction(rt, settings):
    db = _worker_database(settings)  # one connection: whatever a transaction left, the next call sees
    try:
        async def after_each(orders, public):
            async with orders.transaction() as tx:
                await tx.fetch_value("SELECT count(*) FROM {{tables.orders}}")
            first = await public.fetch_value("SELECT current_user")
            with pytest.raises(QueryError):
                await orders.fetch_value("SELECT count(*) FROM {{tables.users.users}}")
            second = await public.fetch_value("SELECT current_user")
            async with db.pool.acquire() as conn:
                return first, second, await conn.fetchval("SHOW role"), conn.is_in_transaction()

        worker = settings.role_prefix + "worker"
        assert db.run(after_each, db.manager("orders"), db.manager("public")) == (worker, worker, "none", False)
    finally:
        db.close()


def test_a_role_switch_cut_short_by_its_deadline_leaves_nothing_behind(rt, settings):
    db = _worker_database(settings, timeout=0.3)
    try:
        async def slow(orders):
            async with orders.transaction() as tx:
                await tx.execute("SELECT pg_sleep(2)")

        from infra.errors import Unavailable

        with pytest.raises(Unavailable):
            db.run(slow, db.manager("orders"))

        async def state():
            async with db.pool.acquire() as conn:
                return await conn.fetchval("SELECT current_user"), conn.is_in_transaction()

        assert db.run(state, timeout=5.0) == (settings.role_prefix + "worker", False)
    finally:
        db.close()


def test_registry_rows_are_kept_only_by_their_own_service(rt, settings):
    users, gateway = login(settings, "users"), login(settings, roles.GATEWAY)
    instance = f"http://test-{uuid.uuid4().hex[:8]}"
    upsert = ("INSERT INTO public.service_registry (service, instance_id, url) VALUES ($1, $2, $2) "
              "ON CONFLICT (service, instance_id) DO UPDATE SET url = EXCLUDED.url, heartbeat_at = now() "
              "RETURNING service")
    assert fetchval(users, upsert, "users", instance) == "users"
    assert fetchval(users, upsert, "users", instance) == "users"  # the heartbeat
    assert refused(users, upsert, "orders", instance)
    assert fetchval(gateway, upsert, "gateway", instance) == "gateway"
    # Another service's row is invisible to users, so it can neither update nor delete it.
    delete = "WITH gone AS (DELETE FROM public.service_registry WHERE instance_id = $1 RETURNING 1) " \
             "SELECT count(*) FROM gone"
    assert fetchval(users, "SELECT count(*) FROM public.service_registry WHERE instance_id = $1", instance) == 1
    assert fetchval(gateway, "SELECT count(*) FROM public.service_registry WHERE instance_id = $1", instance) == 2
    assert fetchval(users, delete, instance) == 1
    assert fetchval(gateway, delete, instance) == 1


def test_no_process_of_the_live_stack_logs_in_as_a_superuser(rt, settings, database_url, live_gateway,
                                                             live_worker):
    expected = {f"oms-{name}": settings.role_prefix + name for name in (*SCHEMAS, "gateway", "worker")}
    expected["oms-tests"] = settings.role_prefix + "worker"

    async def logins():
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(100):
                rows = await conn.fetch(
                    "SELECT a.application_name AS app, a.usename AS login, r.rolsuper AS super "
                    "FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid "
                    "WHERE a.datname = current_database() AND a.application_name LIKE 'oms-%'")
                if {r["app"] for r in rows} >= set(expected):
                    return rows
                await asyncio.sleep(0.1)
            return rows
        finally:
            await conn.close()

    rows = anyio.run(logins)
    assert not [r for r in rows if r["super"]]
    seen = {r["app"]: r["login"] for r in rows if r["app"] in expected}
    assert seen == expected


def test_a_superuser_login_is_refused_outside_development_and_test(rt, settings, caplog):
    if not fetchval(settings.database_url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("the test server's URL does not name a superuser")
    options = dict(dsn=settings.database_url, schemas=("public",), min_size=1, max_size=1, timeout=5.0,
                   application_name="oms-test-superuser")
    with pytest.raises(SuperuserRefused):
        Database(**options, superuser="refuse").start()
    db = Database(**options, superuser="warn").start()
    db.close()
    assert "superuser" in caplog.text


def test_a_table_added_by_a_later_migration_is_granted_to_its_schemas_role_only(rt, settings):
    fetchval(settings.database_url, "CREATE TABLE IF NOT EXISTS orders.roles_probe (id int)")
    try:
        migrations.migrate(settings)
        assert fetchval(login(settings, "orders"), "SELECT count(*) FROM orders.roles_probe") == 0
        assert refused(login(settings, "users"), "SELECT count(*) FROM orders.roles_probe")
        assert refused(login(settings, roles.WORKER), "SELECT count(*) FROM orders.roles_probe")
    finally:
        fetchval(settings.database_url, "DROP TABLE orders.roles_probe")


def test_two_databases_on_one_server_have_roles_of_their_own(rt, servers, settings):
    from tests.conftest import drop_database, new_database

    url = new_database(servers[0], prefix="oms_roles")
    other = replace(settings, database_url=url)
    try:
        migrations.migrate(other)
        assert other.role_prefix != settings.role_prefix
        # Our orders role may connect to the other database, but reads none of its tables.
        mine_there = roles.login_url(url, settings.role_prefix + "orders")
        assert refused(mine_there, "SELECT count(*) FROM orders.orders")
        assert fetchval(login(other, "orders"), "SELECT count(*) FROM orders.orders") == 0
    finally:
        drop_database(servers[0], url)
    names = [other.role_prefix + key for key in (*SCHEMAS, "gateway", "worker")]
    assert fetchval(settings.database_url, "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", names) == 0


def test_a_role_password_is_sent_hashed_as_postgresql_would_hash_it(rt, settings):
    import base64

    if not fetchval(settings.database_url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("reading pg_authid takes a superuser")
    role = settings.role_prefix + "gateway"
    fetchval(settings.database_url, f"ALTER ROLE \"{role}\" PASSWORD 'correct horse'")
    theirs = fetchval(settings.database_url, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
    iterations, salt = theirs.split("$")[1].split(":")
    assert roles.scram_verifier("correct horse", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs
    migrations.migrate(replace(settings, db_role_passwords={"gateway": "battery staple"}))
    ours = fetchval(settings.database_url, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
    iterations, salt = ours.split("$")[1].split(":")
    assert ours.startswith("SCRAM-SHA-256$") and ours == roles.scram_verifier(
        "battery staple", salt=base64.b64decode(salt), iterations=int(iterations))


def test_a_process_started_again_lazily_logs_in_as_the_role_it_first_asked_for(rt, settings, monkeypatch):
    # A gunicorn worker whose database was down at boot opens its pool on the first request.
    from infra import runtime

    monkeypatch.setattr(runtime, "_runtime", None)  # the session's runtime is put back afterwards
    monkeypatch.setattr(runtime, "_intent", None)
    runtime.start(settings, name="lazy-orders", role="orders")
    runtime.stop()
    try:
        again = runtime.get()
        assert (again.role, again.db.login_role) == ("orders", settings.role_prefix + "orders")
    finally:
        runtime.stop()
