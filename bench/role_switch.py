"""What a worker pays for acting as each domain's role: ``python -m bench.role_switch [N]``.

Times N units of work through the schema-scoped manager of a worker login (``BEGIN;
SET LOCAL ROLE`` in one round trip) against the same work by a domain's own login (no
switch), for a transaction with two statements and for a single statement (which the
switch wraps in a transaction of its own: BEGIN + statement + COMMIT). For reference, the
switch sent as its own round trip after BEGIN. Uses DATABASE_URL (migrated, naming the
owner) or an embedded PostgreSQL in a temporary folder. Prints figures; asserts nothing.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from pgdbm import AsyncDatabaseManager, TransactionManager

from config.settings import SCHEMAS, load_settings

COUNT = "SELECT count(*) FROM {{tables.outbox}} WHERE published_at IS NULL"


async def _transaction(db):
    """The manager's transaction: own login -> asyncpg's BEGIN; worker -> BEGIN; SET LOCAL ROLE."""
    async with db.transaction() as tx:
        await tx.fetch_value(COUNT)
        await tx.fetch_value("SELECT 1")


async def _set_after_begin(db):
    """The switch as a round trip of its own, after pgdbm's own BEGIN."""
    async with AsyncDatabaseManager.acquire(db) as conn, conn.transaction():
        tx = TransactionManager(conn, db)
        await tx.execute(f'SET LOCAL ROLE "{db.role}"')
        await tx.fetch_value(COUNT)
        await tx.fetch_value("SELECT 1")


async def _statement(db):
    await db.fetch_value(COUNT)


def _time(db, n: int, fn, *args) -> float:
    """Microseconds per unit over n units, measured on the loop thread."""
    async def units():
        start = time.perf_counter()
        for _ in range(n):
            await fn(*args)
        return (time.perf_counter() - start) / n * 1e6

    return db.run(units, timeout=600)


def main(argv: list[str]) -> int:
    n, rounds = int(argv[0]) if argv else 1000, 7
    with ExitStack() as cleanup:
        url = os.environ.get("DATABASE_URL")
        if not url:
            from devtools import embedded

            folder = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="oms-roleswitch-"))
            url = cleanup.enter_context(embedded.start_postgres(Path(folder) / "pgdata")).url
        figures = _measure(url, n, rounds)
    print(f"microseconds per unit of work: median of {rounds} interleaved rounds of {n}, one connection each")
    for name, micros in figures.items():
        print(f"  {name:64} {micros:8.1f}")
    return 0


def _measure(url: str, n: int, rounds: int) -> dict[str, float]:
    from infra import migrations, roles
    from infra.db import Database

    settings = load_settings({"DATABASE_URL": url})
    migrations.migrate(settings)

    def database(kind):
        login = roles.login(settings, kind)
        return Database(dsn=login.dsn, switch_roles=login.switch, schemas=SCHEMAS, min_size=1, max_size=1,
                        timeout=30, application_name=f"bench-roleswitch-{kind}").start()

    worker, orders = database(roles.WORKER), database("orders")
    w, o = worker.manager("orders"), orders.manager("orders")
    variants = {
        "transaction, own login (BEGIN)": (orders, _transaction, o),
        "transaction, worker (BEGIN; SET LOCAL ROLE: one round trip)": (worker, _transaction, w),
        "transaction, worker (BEGIN, then SET LOCAL ROLE)": (worker, _set_after_begin, w),
        "statement, own login": (orders, _statement, o),
        "statement, worker (BEGIN; SET LOCAL ROLE, statement, COMMIT)": (worker, _statement, w),
    }
    try:
        for db, fn, manager in variants.values():  # warm: connections, statement caches
            _time(db, 200, fn, manager)
        samples = {name: [] for name in variants}
        for _ in range(rounds):  # interleaved, so a noisy moment hits every variant alike
            for name, (db, fn, manager) in variants.items():
                samples[name].append(_time(db, n, fn, manager))
        figures = {name: statistics.median(values) for name, values in samples.items()}
    finally:
        worker.close()
        orders.close()
    return figures


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
