"""Celery tasks: thin, idempotent, one service call each, named <domain>.<verb>.

A message is acknowledged only once its effect or its dead letter is recorded:

- a transient failure (database, broker, SMTP or a provider unavailable, a deadlock,
  a time limit) retries for as long as the outage lasts, the wait doubling up to
  ``TASK_RETRY_BACKOFF_MAX_SECONDS`` (with jitter), with no count limit;
- any other failure is recorded in ``public.dead_letters`` (to be redriven from the
  CLI); if even that record cannot be written, the task retries like a transient
  failure, so the message stays in the broker until one of the two is recorded.

What a lost message would strand, the beat sweeps re-announce (``orders.reconcile``,
``notifications.redeliver``, ``outbox.sweep``). Log lines carry ids, never payloads.
"""
from __future__ import annotations

import functools
import logging

import asyncpg
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError

from infra import dead_letters, runtime
from infra.errors import Unavailable
from services import wiring
from workers import relay
from workers.celery_app import app, settings

logger = logging.getLogger(__name__)

TRANSIENT = (
    Unavailable,  # database or a dependency down (DeliveryPending, RecipientUnknown are kinds of it)
    OperationalError,  # the broker, while publishing what a transaction emitted
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    SoftTimeLimitExceeded,
)


class DomainTask(Task):
    autoretry_for = TRANSIENT
    retry_backoff = 1
    retry_backoff_max = int(settings.task_retry_backoff_max)
    retry_jitter = True
    max_retries = None  # transient failures retry for as long as they last
    acks_late = True
    reject_on_worker_lost = True

    def retry(self, *args, **kwargs):
        # Celery drops the message (Reject, requeue=False) when it cannot publish the
        # retry, e.g. the broker went away meanwhile: give it back to the broker instead.
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            if exc.requeue:
                raise
            raise Reject(exc.reason, requeue=True) from None


def _backoff(task: Task) -> int:
    """The wait before the next attempt, as Celery's autoretry computes it."""
    return get_exponential_backoff_interval(factor=task.retry_backoff, retries=task.request.retries,
                                            maximum=task.retry_backoff_max, full_jitter=task.retry_jitter)


def _event_id(args: tuple) -> str | None:
    return args[0].get("id") if args and isinstance(args[0], dict) else None


def _dead_letter(task: Task, args: tuple, kwargs: dict, exc: Exception) -> None:
    """Record a message that cannot succeed; raises ``Unavailable`` if the record cannot be written."""
    request = task.request
    db = runtime.db()
    db.run(
        dead_letters.record, db.manager(dead_letters.SCHEMA), task_name=task.name, task_id=request.id,
        queue=(request.delivery_info or {}).get("routing_key"), args=list(args), kwargs=dict(kwargs),
        error=f"{type(exc).__name__}: {exc}", attempts=request.retries + 1,
    )
    logger.error("task failed permanently; recorded as a dead letter",
                 extra={"task": task.name, "task_id": request.id, "event_id": _event_id(args),
                        "error": type(exc).__name__})


def task(name: str, queue: str):
    """A domain task (queue from ``task_routes``; ``queue`` documents it here)."""
    def decorate(fn):
        @app.task(name=name, base=DomainTask, bind=True)
        @functools.wraps(fn)
        def run(self, *args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except TRANSIENT as exc:
                logger.warning("task will retry", extra={"task": name, "task_id": self.request.id,
                                                          "event_id": _event_id(args), "retries": self.request.retries,
                                                          "error": type(exc).__name__})
                carry = getattr(exc, "carry", None)
                if carry:  # what this attempt learnt and could not record goes with the retry
                    raise self.retry(exc=exc, args=args, kwargs={**kwargs, **carry}, countdown=_backoff(self))
                raise
            except Exception as exc:  # a bug or a poison message: dead-letter it (or retry until we can)
                _dead_letter(self, args, kwargs, exc)
                return None
        return run
    return decorate


def periodic(name: str):
    """A beat task: no retries and no dead letters; the next tick runs it again."""
    return app.task(name=name, acks_late=False, ignore_result=True)


def _consumer(consumer) -> None:
    @task(consumer.task, consumer.task.partition(".")[0])
    def consume(event: dict, **carried) -> None:
        consumer.handle(event=event, **carried)


def _periodic(job) -> None:
    @periodic(job.task)
    def run_periodic():
        return job.run()


# One task per consumer and per periodic job that the domains declare (their wiring.py).
for _domain in wiring():
    for _declared in _domain.consumers:
        _consumer(_declared)
    for _declared in _domain.periodic:
        _periodic(_declared)


@periodic("outbox.sweep")
def sweep() -> int:
    return relay.sweep()
