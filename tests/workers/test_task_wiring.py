"""How events become tasks, and how a task meets an outage (the wiring, not the domain).

The relay publishes each event through the project's Celery app to a Redis of this
test's own; an in-process worker (celery.contrib.pytest's ``celery_app`` and
``celery_worker``, configured like the real one) runs stand-ins registered under the
real task names, so the test sees exactly which tasks each event became, on which
queue, with which arguments. The retry tests run the real tasks eagerly with the one
service function each calls replaced.
"""
from __future__ import annotations

import importlib

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace

import pytest

# pytest-celery 1.x replaces celery.contrib.pytest's in-process ``celery_worker`` with one
# that runs workers in Docker containers; this module wants the in-process one back.
from celery.contrib.pytest import celery_worker  # noqa: F401
from tests.conftest import celery_broker
from tests.support import wait_for


@dataclass(frozen=True)
class Call:
    task: str
    args: tuple
    kwargs: dict
    queue: str | None
    eta: str | None
    at: float  # time.monotonic() when it ran


# -- the worker ----------------------------------------------------------------------------
@pytest.fixture
def celery_config(settings, own_broker):
    """The project's Celery configuration, on a broker of this test's own."""
    from config.celery import celery_config as project_config

    return {**project_config(settings), "broker_url": own_broker}


@pytest.fixture
def celery_worker_parameters():
    from config.celery import QUEUES

    # Every queue a real worker consumes (-Q in the Makefile and docker-compose.yml);
    # no ping: results are off, as in production.
    return {"queues": list(QUEUES), "perform_ping_check": False, "shutdown_timeout": 10}


@pytest.fixture
def received(celery_app):
    """Stand-ins under every task name an event is routed to; the calls they received."""
    from workers.relay import ROUTES

    calls: list[Call] = []
    lock = threading.Lock()

    def stand_in(self, *args, **kwargs):
        delivery = self.request.delivery_info or {}
        with lock:
            calls.append(Call(self.name, args, kwargs, delivery.get("routing_key"), self.request.eta,
                              time.monotonic()))

    for name in sorted({route.task for routes in ROUTES.values() for route in routes}):
        celery_app.task(name=name, bind=True, shared=False, lazy=False)(stand_in)
    return calls


@pytest.fixture
def worker(received, celery_worker):
    """The in-process worker, started once the stand-ins are registered."""
    return celery_worker


@pytest.fixture
def publish(rt, own_broker, monkeypatch):
    """``send_events`` with the project's app publishing to this test's broker, at a given delay."""
    from workers import relay
    from workers.celery_app import app

    def send(events, *, fulfilment_delay: float):
        monkeypatch.setattr(rt, "settings", replace(rt.settings, fulfilment_delay_seconds=fulfilment_delay))
        with celery_broker(app, own_broker):
            return relay.send_events(events)

    return send


def _event(event_type: str) -> dict:
    return {"id": str(uuid.uuid4()), "type": event_type, "payload": {"order_id": str(uuid.uuid4())},
            "headers": {}}


def _delivered(calls: list[Call]) -> list[tuple[dict, Call]]:
    """(event, the call that carried it): a message carries a list of events."""
    return [(event, call) for call in calls for event in call.args[0]]


def _arrived(received: list[Call], count: int) -> list[tuple[dict, Call]]:
    wait_for(lambda: len(_delivered(list(received))) >= count, timeout=15, what=f"{count} deliveries")
    time.sleep(0.5)  # anything beyond the expected would arrive by now
    return _delivered(list(received))


# -- (a) every route, exactly ----------------------------------------------------------------
def test_each_event_becomes_exactly_the_tasks_its_routes_name_with_the_event_as_argument(
        worker, received, publish):
    from workers.relay import ROUTES

    events = [_event(event_type) for event_type in ROUTES] + [_event("test.nobody_listens")]
    assert publish(events, fulfilment_delay=0) == [e["id"] for e in events]  # all sent, none stuck

    expected = Counter()
    for event in events:
        for route in ROUTES.get(event["type"], ()):
            if not route.delayed:  # with no delay, fulfilment happens in the reservation's transaction
                expected[(event["id"], route.task, route.queue)] += 1
    delivered = _arrived(received, sum(expected.values()))
    by_id = {e["id"]: e for e in events}
    assert Counter((event["id"], c.task, c.queue) for event, c in delivered) == expected
    for event, call in delivered:
        assert event == by_id[event["id"]] and len(call.args) == 1 and call.kwargs == {}, call
        assert call.eta is None, call
    # Events for one consumer that were ready together travelled as one message.
    assert len(received) == len({(c.task, c.queue) for _, c in delivered}), received


def test_a_lone_event_goes_alone_and_at_once(worker, received, publish):
    event = _event("order.placed")
    assert publish([event], fulfilment_delay=0) == [event["id"]]
    [(delivered, call)] = _arrived(received, 1)
    assert (delivered, call.task, call.args) == (event, "inventory.reserve", ([event],))


def test_a_batch_is_cut_at_event_batch_max(worker, received, publish, rt, monkeypatch):
    monkeypatch.setattr(rt, "settings", replace(rt.settings, event_batch_max=3))
    events = [_event("order.placed") for _ in range(7)]
    assert publish(events, fulfilment_delay=0) == [e["id"] for e in events]
    delivered = _arrived(received, 7)
    assert sorted(len(call.args[0]) for call in received) == [1, 3, 3]
    assert [e["id"] for e, _ in sorted(delivered, key=lambda d: events.index(d[0]))] == [e["id"] for e in events]


def test_a_delayed_route_is_sent_with_the_fulfilment_delay_and_the_others_without(
        worker, received, publish):
    from workers.relay import ROUTES

    delay = 1.0
    events = [_event(t) for t, routes in ROUTES.items() if any(r.delayed for r in routes)]
    assert events, "no route is delayed any more: this test has nothing to check"
    sent_at = time.monotonic()
    publish(events, fulfilment_delay=delay)

    expected = Counter((e["id"], r.task, r.queue, r.delayed) for e in events for r in ROUTES[e["type"]])
    delivered = _arrived(received, sum(expected.values()))
    assert Counter((e["id"], c.task, c.queue, c.eta is not None) for e, c in delivered) == expected
    for _, call in delivered:
        if call.eta:  # held by the worker until then, not run at once
            assert call.at - sent_at >= delay - 0.05, call


# -- (b) an outage retries -----------------------------------------------------------------
# The one service function each event task calls (the domains' wiring.py).
SERVICE_CALLS = {
    "inventory.reserve": "services.inventory.service.reserve_order",
    "inventory.commit": "services.inventory.service.commit_order",
    "inventory.release": "services.inventory.service.release_order",
    "orders.apply_reservation": "services.orders.service.apply_reservation",
    "orders.fulfil": "services.orders.service.fulfil_order",
    "orders.settle_stock": "services.orders.service.settle_stock",
    "orders.track_product": "services.orders.service.track_product",
    "notifications.notify": "services.notifications.service.notify",
    "notifications.remember_recipient": "services.notifications.service.remember_recipient",
}


def _replace_service(monkeypatch, task: str, replacement) -> None:
    """Make ``task`` call ``replacement`` instead of the service function its domain declares."""
    from services import wiring

    consumer = next(c for domain in wiring() for c in domain.consumers if c.task == task)
    module, _, function = SERVICE_CALLS[task].rpartition(".")
    assert consumer.handle is getattr(importlib.import_module(module), function)
    monkeypatch.setattr(consumer, "handle", replacement)


@pytest.fixture
def eager_app():
    """The project's Celery app in eager mode (tasks run in the caller), restored afterwards."""
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app

    eager = {"task_always_eager": True, "task_eager_propagates": True}
    previous = {key: app.conf[key] for key in eager}
    app.conf.update(eager)
    try:
        yield app
    finally:
        app.conf.update(previous)


def test_every_task_an_event_is_routed_to_is_a_domain_task_that_retries_on_unavailable(eager_app):
    from infra.errors import Unavailable
    from workers.relay import ROUTES
    from workers.tasks import DomainTask

    for name in {route.task for routes in ROUTES.values() for route in routes}:
        task = eager_app.tasks[name]
        assert isinstance(task, DomainTask), name
        assert issubclass(Unavailable, tuple(task.autoretry_for)), name


@pytest.mark.parametrize("name", sorted(SERVICE_CALLS))
def test_a_task_whose_service_is_unavailable_asks_to_be_retried(eager_app, monkeypatch, name):
    from celery.exceptions import Retry

    from infra.errors import Unavailable

    def unavailable(**_):
        raise Unavailable("the database is down")

    _replace_service(monkeypatch, name, unavailable)
    with pytest.raises(Retry) as raised:  # eager + propagate: the retry surfaces instead of running later
        eager_app.tasks[name].apply(args=[_event("test.outage")], throw=True)
    assert isinstance(raised.value.exc, Unavailable)


@pytest.mark.parametrize("name", sorted(SERVICE_CALLS))
def test_a_task_retries_through_an_outage_until_its_service_answers(eager_app, monkeypatch, name):
    from infra.errors import Unavailable

    task = eager_app.tasks[name]
    event = _event("test.outage")
    attempts: list[tuple[int, dict]] = []

    def down_twice(**kwargs):
        attempts.append((task.request.retries, kwargs))
        if len(attempts) <= 2:
            raise Unavailable("the database is down")

    _replace_service(monkeypatch, name, down_twice)
    # Without propagation an eager retry runs again at once (no countdown), and again.
    eager_app.conf.task_eager_propagates = False
    result = task.apply(args=[event])
    assert result.state == "SUCCESS", result.traceback
    assert [retries for retries, _ in attempts] == [0, 1, 2]
    assert all(kwargs["event"] == event for _, kwargs in attempts)


def test_a_mail_sent_but_not_recorded_goes_with_the_retry_and_is_recorded_not_sent_again(eager_app, monkeypatch):
    from services.notifications.errors import OutcomesUnrecorded

    task = eager_app.tasks["notifications.notify"]
    event = _event("order.fulfilled")
    calls: list[dict] = []

    def notify(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:  # sent, then the database went away before the outcome was recorded
            raise OutcomesUnrecorded([("7f1f6a4e-0000-4000-8000-000000000001", "sent", None)])

    _replace_service(monkeypatch, "notifications.notify", notify)
    eager_app.conf.task_eager_propagates = False
    result = task.apply(args=[event])
    assert result.state == "SUCCESS", result.traceback
    assert calls[0] == {"event": event}
    assert calls[1] == {"event": event, "outcomes": [["7f1f6a4e-0000-4000-8000-000000000001", "sent", None]]} \
        or calls[1] == {"event": event, "outcomes": [("7f1f6a4e-0000-4000-8000-000000000001", "sent", None)]}


# -- (c) a message of several events -----------------------------------------------------------
def test_a_poisoned_event_in_a_batch_is_dead_lettered_alone_and_its_neighbours_are_handled(
        eager_app, monkeypatch, rt):
    from infra import dead_letters

    handled: list[str] = []
    poison = _event("inventory.committed")

    def settle(*, event):
        if event["id"] == poison["id"]:
            raise ValueError("not an order this system knows")
        handled.append(event["id"])

    _replace_service(monkeypatch, "orders.settle_stock", settle)
    before, after = _event("inventory.committed"), _event("inventory.released")
    result = eager_app.tasks["orders.settle_stock"].apply(args=[[before, poison, after]], throw=True)
    assert result.state == "SUCCESS"
    assert handled == [before["id"], after["id"]]
    letters = [row for row in rt.db.run(dead_letters.list_open, rt.db.manager("public"), limit=1000)
               if row["task_name"] == "orders.settle_stock" and poison["id"] in str(row["args"])]
    assert len(letters) == 1 and letters[0]["args"] == [poison], letters
    assert "ValueError" in letters[0]["error"]
    for neighbour in (before, after):
        assert not [row for row in rt.db.run(dead_letters.list_open, rt.db.manager("public"), limit=1000)
                    if neighbour["id"] in str(row["args"])]


def test_a_transient_failure_retries_only_the_event_that_failed(eager_app, monkeypatch):
    from infra.errors import Unavailable

    task = eager_app.tasks["orders.settle_stock"]
    events = [_event("inventory.committed") for _ in range(3)]
    attempts: list[tuple[int, str]] = []

    def settle(*, event):
        attempts.append((task.request.retries, event["id"]))
        if event["id"] == events[1]["id"] and sum(1 for _, i in attempts if i == event["id"]) <= 2:
            raise Unavailable("the database is down")

    _replace_service(monkeypatch, "orders.settle_stock", settle)
    eager_app.conf.task_eager_propagates = False
    result = task.apply(args=[events])
    assert result.state == "SUCCESS", result.traceback
    first, middle, last = (e["id"] for e in events)
    assert attempts == [(0, first), (0, middle), (0, last), (1, middle), (2, middle)]
