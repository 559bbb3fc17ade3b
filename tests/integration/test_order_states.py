"""The orders schema's trigger: legal transitions are recorded in history, every illegal one
is refused by PostgreSQL whatever the code does, and leaves the order and its history alone."""
from __future__ import annotations

import uuid

import asyncpg
import pytest
from pgdbm.errors import QueryError

STATUSES = ("pending", "reserved", "fulfilled", "rejected", "cancelled")
LEGAL = {("pending", "reserved"), ("pending", "rejected"), ("pending", "cancelled"),
         ("reserved", "fulfilled"), ("reserved", "cancelled")}
ILLEGAL = [(a, b) for a in STATUSES for b in STATUSES if a != b and (a, b) not in LEGAL]
# How a fresh order reaches each status by legal steps.
PATH = {"pending": [], "reserved": ["reserved"], "fulfilled": ["reserved", "fulfilled"],
        "rejected": ["rejected"], "cancelled": ["cancelled"]}
REASON = {"rejected": "out_of_stock", "cancelled": "customer"}


async def _new_order(db) -> uuid.UUID:
    return await db.fetch_value(
        "INSERT INTO {{tables.orders}} (user_id, total_cents, currency) VALUES ($1, 100, 'USD') RETURNING id",
        uuid.uuid4(),
    )


async def _move(db, order_id: uuid.UUID, status: str) -> None:
    await db.execute("UPDATE {{tables.orders}} SET status = $2, reason = $3 WHERE id = $1",
                     order_id, status, REASON.get(status))


async def _state(db, order_id: uuid.UUID) -> tuple[str, list[str]]:
    status = await db.fetch_value("SELECT status FROM {{tables.orders}} WHERE id = $1", order_id)
    history = await db.fetch_all(
        "SELECT status FROM {{tables.order_history}} WHERE order_id = $1 ORDER BY seq", order_id)
    return status, [h["status"] for h in history]


def _order_at(rt, status: str) -> uuid.UUID:
    db = rt.db.manager("orders")
    order_id = rt.db.run(_new_order, db)
    for step in PATH[status]:
        rt.db.run(_move, db, order_id, step)
    assert rt.db.run(_state, db, order_id) == (status, ["pending", *PATH[status]])
    return order_id


def test_the_five_statuses_have_fifteen_illegal_transitions():
    assert len(ILLEGAL) == 15


@pytest.mark.parametrize("from_, to", sorted(LEGAL))
def test_a_legal_transition_is_made_and_recorded_in_history(rt, from_, to):
    order_id = _order_at(rt, from_)
    rt.db.run(_move, rt.db.manager("orders"), order_id, to)
    assert rt.db.run(_state, rt.db.manager("orders"), order_id) == (to, ["pending", *PATH[from_], to])


@pytest.mark.parametrize("from_, to", ILLEGAL)
def test_an_illegal_transition_is_refused_by_the_database_and_changes_nothing(rt, from_, to):
    db = rt.db.manager("orders")
    order_id = _order_at(rt, from_)
    before = rt.db.run(_state, db, order_id)

    with pytest.raises((asyncpg.exceptions.CheckViolationError, QueryError)) as refused:
        rt.db.run(_move, db, order_id, to)
    # pgdbm wraps what asyncpg raised; the cause is PostgreSQL's check_violation from the trigger.
    error = refused.value if isinstance(refused.value, asyncpg.PostgresError) else refused.value.__cause__
    assert isinstance(error, asyncpg.exceptions.CheckViolationError), repr(refused.value)
    assert f"illegal order transition {from_} -> {to}" in str(error)

    assert rt.db.run(_state, db, order_id) == before


def test_an_order_cannot_be_inserted_in_any_status_but_pending(rt):
    async def insert_fulfilled(db):
        await db.execute(
            "INSERT INTO {{tables.orders}} (user_id, status, total_cents, currency) "
            "VALUES ($1, 'fulfilled', 100, 'USD')", uuid.uuid4())

    with pytest.raises((asyncpg.exceptions.CheckViolationError, QueryError)) as refused:
        rt.db.run(insert_fulfilled, rt.db.manager("orders"))
    error = refused.value if isinstance(refused.value, asyncpg.PostgresError) else refused.value.__cause__
    assert isinstance(error, asyncpg.exceptions.CheckViolationError), repr(refused.value)
