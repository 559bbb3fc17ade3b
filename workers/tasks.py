"""Celery tasks: thin, idempotent, one service call each, named <domain>.<verb>.

Transient failures (database or a dependency unavailable) retry with exponential
backoff and jitter, a bounded number of times; anything that gives up lands in
the dead_letters table with its arguments, to be redriven by the CLI.
"""
from __future__ import annotations

import logging

from celery import Task
from kombu.exceptions import OperationalError

from services import dead_letters, runtime
from services.errors import Unavailable
from services.inventory import service as inventory
from services.notifications import service as notifications
from services.orders import service as orders
from workers import relay
from workers.celery_app import app, settings

logger = logging.getLogger(__name__)


class DomainTask(Task):
    autoretry_for = (Unavailable, OperationalError)
    retry_backoff = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = settings.task_max_retries
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        logger.error("task gave up; recorded as a dead letter",
                     extra={"task": self.name, "task_id": task_id, "error": repr(exc)})
        try:
            db = runtime.db()
            db.run(
                dead_letters.record, db.manager(dead_letters.SCHEMA), task_name=self.name, task_id=task_id,
                queue=(self.request.delivery_info or {}).get("routing_key"), args=list(args),
                kwargs=dict(kwargs), error=f"{type(exc).__name__}: {exc}", attempts=self.request.retries + 1,
            )
        except Exception:
            logger.critical("could not record a dead letter", exc_info=True,
                            extra={"task": self.name, "task_id": task_id, "task_args": args})


def task(name: str, queue: str):
    # Queues come from task_routes (config/celery.py); ``queue`` documents it here.
    return app.task(name=name, base=DomainTask)


# Events a task's transaction emits are published by the service right after commit.
runtime.set_publisher(relay.publish)


@task("inventory.reserve", "inventory")
def reserve(event: dict) -> None:
    inventory.reserve_order(event=event)


@task("inventory.commit", "inventory")
def commit(event: dict) -> None:
    inventory.commit_order(event=event)


@task("inventory.release", "inventory")
def release(event: dict) -> None:
    inventory.release_order(event=event)


@task("orders.apply_reservation", "orders")
def apply_reservation(event: dict) -> None:
    orders.apply_reservation(event=event)


@task("orders.fulfil", "orders")
def fulfil(event: dict) -> None:
    orders.fulfil_order(event=event)


@task("orders.expire_reservations", "orders")
def expire_reservations() -> int:
    return orders.expire_reservations()


@app.task(name="notifications.notify", base=DomainTask, bind=True)
def notify(self, event: dict) -> None:
    notifications.notify(event=event, final_attempt=self.request.retries >= self.max_retries)


@task("notifications.remember_recipient", "notifications")
def remember_recipient(event: dict) -> None:
    notifications.remember_recipient(event=event)


@task("outbox.sweep", "outbox")
def sweep() -> int:
    return relay.sweep()
