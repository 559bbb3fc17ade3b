"""One loop and one pool per process, schema-scoped managers, and the 503 paths."""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os

import asyncpg
import pytest

from config.settings import SCHEMAS
from infra import runtime
from infra.db import Database
from infra.errors import Unavailable


def test_every_manager_shares_the_one_pool(rt):
    pools = {id(manager._pool) for manager in rt.db.managers.values()}
    assert pools == {id(rt.db.pool)}
    assert set(SCHEMAS) <= set(rt.db.managers)
    assert runtime.get() is rt


def test_same_named_tables_in_two_schemas_stay_separate(rt):
    async def write_and_count(orders, inventory):
        await orders.execute(
            "INSERT INTO {{tables.outbox}} (event_type, payload) VALUES ('test.only_orders', $1)",
            json.dumps({}),
        )
        count = "SELECT count(*) FROM {{tables.outbox}} WHERE event_type = 'test.only_orders'"
        return await orders.fetch_value(count), await inventory.fetch_value(count)

    in_orders, in_inventory = rt.db.run(write_and_count, rt.db.manager("orders"), rt.db.manager("inventory"))
    assert in_orders >= 1
    assert in_inventory == 0


def test_an_unqualified_table_name_fails(rt):
    async def unqualified(db):
        return await db.fetch_value("SELECT count(*) FROM outbox")

    with pytest.raises(Exception) as caught:
        rt.db.run(unqualified, rt.db.manager("orders"))
    assert isinstance(caught.value.__cause__ or caught.value, asyncpg.UndefinedTableError)


def _child(queue, parent_pool_id, parent_pid):
    try:
        from infra import runtime as child_runtime

        inherited = child_runtime._runtime
        try:
            inherited.db.run(asyncio.sleep, 0)
            used_parent = "parent pool was usable"
        except RuntimeError:
            used_parent = "refused"
        mine = child_runtime.get()
        value = mine.db.run(mine.db.manager("users").fetch_value, "SELECT 1")
        queue.put((used_parent, id(mine.db.pool) != parent_pool_id, mine.pid != parent_pid, value))
        child_runtime.stop()
    except BaseException as exc:  # report, do not hang the parent
        queue.put(repr(exc))


def test_a_forked_child_never_uses_its_parents_pool(rt):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue, id(rt.db.pool), os.getpid()))
    child.start()
    result = queue.get(timeout=30)
    child.join(30)
    assert result == ("refused", True, True, 1)
    # The parent's pool is untouched by the child's exit.
    assert rt.db.run(rt.db.manager("users").fetch_value, "SELECT 1") == 1


def _database(settings, **overrides) -> Database:
    options = dict(
        dsn=settings.database_url, schemas=("users",), min_size=1, max_size=1, timeout=0.5,
        application_name="oms-test-bridge",
    )
    options.update(overrides)
    return Database(**options)


def test_pool_exhaustion_is_unavailable_after_the_timeout_not_a_hang(settings):
    db = _database(settings).start()
    try:
        async def hold(seconds):
            async with db.pool.acquire():
                await asyncio.sleep(seconds)

        holder = db._portal.start_task_soon(hold, 3)
        with pytest.raises(Unavailable):
            db.run(db.manager("users").fetch_value, "SELECT 1")
        holder.result(10)
        assert db.run(db.manager("users").fetch_value, "SELECT 1") == 1
    finally:
        db.close()


def test_a_database_outage_is_unavailable(settings):
    with pytest.raises(Unavailable):
        _database(settings, dsn="postgresql://postgres@127.0.0.1:1/nothing").start()


def test_a_closed_bridge_is_unavailable(settings):
    db = _database(settings).start()
    db.close()
    with pytest.raises(Unavailable):
        db.run(asyncio.sleep, 0)
