"""Admission control: while the order pipeline is over its latency budget, placement is
refused with 503 and Retry-After, and nothing is created; an order stranded by a lost
message does not hold the door shut.
"""
from __future__ import annotations

import time

import pytest

from tests.conftest import Live
from tests.support import Api, create_product, register, wait_for

BUDGET = 0.4  # seconds: refused once the oldest order not yet reserved is 0.2 s old


def _stalled(stack_env, broker: str, budget: float):
    """An orders service with a latency budget, on a broker no worker reads: its orders stay
    pending, as if the pipeline had stopped."""
    server = Live("orders", {**stack_env, "CELERY_BROKER_URL": broker},
                  ORDER_LATENCY_BUDGET_SECONDS=str(budget), WEB_CONCURRENCY="1")
    try:
        yield Api(server.url)
    finally:
        server.stop()


@pytest.fixture
def stalled_orders(stack_env, own_broker):
    yield from _stalled(stack_env, own_broker, BUDGET)


def _first_order(api: Api, token: str, product: dict, *, timeout: float = 20) -> dict:
    """Placed once the door is open: an earlier test's stalled orders may still count."""
    body = {"items": [{"product_id": product["id"], "quantity": 1}]}
    return wait_for(lambda: (r := api.call("POST", "/api/orders", token=token, json_body=body))[0] == 202 and r[2],
                    timeout=timeout, interval=0.5, what="admission of the first order")


def _my_orders(api: Api, token: str) -> int:
    return len(api.ok("GET", "/api/orders?limit=100", token=token)["items"])


def test_placement_is_refused_with_retry_after_while_the_backlog_is_over_budget(gateway, admin, stalled_orders):
    token = register(gateway)["access_token"]
    product = create_product(gateway, admin, stock=100)
    first = _first_order(stalled_orders, token, product)
    assert first["status"] == "pending"

    def refused():
        status, headers, body = stalled_orders.call(
            "POST", "/api/orders", token=token, json_body={"items": [{"product_id": product["id"], "quantity": 1}]})
        assert status in (202, 503), (status, body)
        return (status, headers, body) if status == 503 else None

    _, headers, body = wait_for(refused, timeout=10, what="a refusal once the first order waited")
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["type"] == "/problems/pipeline-overloaded" and body["status"] == 503, body
    assert int(headers["Retry-After"]) >= 1
    placed = _my_orders(stalled_orders, token)
    for _ in range(3):
        assert stalled_orders.call("POST", "/api/orders", token=token,
                                   json_body={"items": [{"product_id": product["id"], "quantity": 1}]})[0] == 503
    assert _my_orders(stalled_orders, token) == placed  # a refused order is not written


def test_an_order_stranded_longer_than_ten_budgets_no_longer_counts(gateway, admin, stalled_orders):
    token = register(gateway)["access_token"]
    product = create_product(gateway, admin, stock=100)
    _first_order(stalled_orders, token, product)
    body = {"items": [{"product_id": product["id"], "quantity": 1}]}
    wait_for(lambda: stalled_orders.call("POST", "/api/orders", token=token, json_body=body)[0] == 503,
             timeout=10, what="the first refusal")
    started = time.monotonic()
    # Past 10 x the budget the stalled order is a stranded one (reconciliation re-announces
    # it), not a queue that new orders wait behind: the door opens again.
    wait_for(lambda: stalled_orders.call("POST", "/api/orders", token=token, json_body=body)[0] == 202,
             timeout=20, interval=0.5, what="admission once the stalled order left the window")
    assert time.monotonic() - started >= 10 * BUDGET - 1.0


QUEUE_BUDGET = 4.0  # seconds: the age rule waits 2 s, time enough to fill the queue first


@pytest.fixture
def slow_orders(stack_env, own_broker):
    yield from _stalled(stack_env, own_broker, QUEUE_BUDGET)


def test_a_queue_longer_than_the_pipeline_drains_in_half_the_budget_is_refused(gateway, admin, slow_orders):
    """A burst is refused by the queue it makes, before its oldest order has waited: nothing
    was decided in the last half budget, so no more than the always-admitted few may wait."""
    from services.orders.service import _Admission

    token = register(gateway)["access_token"]
    product = create_product(gateway, admin, stock=100)
    body = {"items": [{"product_id": product["id"], "quantity": 1}]}
    _first_order(slow_orders, token, product, timeout=10 * QUEUE_BUDGET + 10)
    started = time.monotonic()
    admitted = 1
    while (answer := slow_orders.call("POST", "/api/orders", token=token, json_body=body))[0] == 202:
        admitted += 1
        assert admitted <= 3 * _Admission.min_queue, "a burst was never refused"
    status, headers, problem = answer
    assert time.monotonic() - started < QUEUE_BUDGET / 2, "refused by the oldest order's age, not by the queue"
    assert status == 503 and problem["type"] == "/problems/pipeline-overloaded", problem
    assert int(headers["Retry-After"]) >= 1
    assert admitted == _Admission.min_queue  # every order of the test waits, nothing was decided
    assert _my_orders(slow_orders, token) == admitted  # the refused one is not written
