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

import json
import logging
import uuid
from datetime import datetime

import asyncpg
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError
from opentelemetry import propagate, trace

from infra import dead_letters, pagination, runtime
from infra.errors import Unavailable
from services import wiring
from workers import relay
from workers.celery_app import app, settings

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

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


def _traced(event: dict, name: str):
    """A span for one event of a message, in the trace the event was written in: an order
    stays one trace whatever else travelled in its message."""
    return _tracer.start_as_current_span(name, context=propagate.extract(event.get("headers") or {}))


def _resend_alone(task: Task, event: dict, kwargs: dict) -> None:
    """Retry one event of a batch as a message of its own (it carries what it learnt)."""
    task.signature_from_request(task.request, args=[[event]], kwargs=kwargs, countdown=_backoff(task),
                                retries=task.request.retries + 1).apply_async()


def consumer_task(consumer) -> Task:
    """The task of a consumer a domain declares: a message carries one event or several,
    each handled in its own transaction (its own inbox row). A transient failure retries
    only the events that failed; a permanent one dead-letters that event alone; a message
    delivered again has no second effect (each event's inbox row, or its version)."""
    name = consumer.task

    @app.task(name=name, base=DomainTask, bind=True)
    def run(self, events, **carried):
        batch = [events] if isinstance(events, dict) else list(events)  # dead letters redrive one event
        failed: list[dict] = []
        cause: Exception | None = None
        for event in batch:
            try:
                with _traced(event, name):
                    consumer.handle(event=event, **carried)
            except TRANSIENT as exc:
                logger.warning("task will retry", extra={"task": name, "task_id": self.request.id,
                                                          "event_id": event.get("id"), "retries": self.request.retries,
                                                          "error": type(exc).__name__})
                carry = getattr(exc, "carry", None)
                if carry and len(batch) == 1:  # what this attempt learnt and could not record goes with the retry
                    raise self.retry(exc=exc, args=[batch], kwargs={**carried, **carry}, countdown=_backoff(self))
                if carry:
                    _resend_alone(self, event, {**carried, **carry})
                    continue
                failed.append(event)
                cause = exc
            except Exception as exc:  # a bug or a poison event: dead-letter it alone (or retry until we can)
                try:
                    _dead_letter(self, (event,), carried, exc)
                except TRANSIENT as down:
                    failed.append(event)
                    cause = down
        if failed and len(failed) == len(batch):
            raise cause  # autoretry: the same message again, after the backoff
        if failed:
            raise self.retry(exc=cause, args=[failed], kwargs=carried, countdown=_backoff(self))
        return None

    return run


def periodic(name: str):
    """A beat task: no retries and no dead letters; the next tick runs it again."""
    return app.task(name=name, acks_late=False, ignore_result=True)


def _periodic(job) -> None:
    @periodic(job.task)
    def run_periodic():
        return job.run()


# One task per consumer and per periodic job that the domains declare (their wiring.py).
for _domain in wiring():
    for _declared in _domain.consumers:
        consumer_task(_declared)
    for _declared in _domain.periodic:
        _periodic(_declared)


@periodic("outbox.sweep")
def sweep() -> int:
    return relay.sweep()


# -- dead letters, for the gateway's admin API: only the worker role may read and redrive them --
REPLY_TTL_SECONDS = 60


def _json(value):
    return value.isoformat() if isinstance(value, datetime) else str(value)


@app.task(name=dead_letters.LIST_TASK, acks_late=False, ignore_result=True)
def list_dead_letters(*, reply_to: str, state: str, limit: int, cursor: str | None = None) -> None:
    """One page of dead letters, answered on the Redis list ``reply_to`` (there is no result
    backend); the gateway waits for it, and the answer expires if it stopped waiting."""
    db = runtime.db()
    rows = db.run(dead_letters.list_page, db.manager(dead_letters.SCHEMA), state=state, limit=limit,
                  before=pagination.decode(cursor))
    answer = json.dumps(pagination.page(rows, limit), default=_json)
    runtime.get().redis.pipeline().rpush(reply_to, answer).expire(reply_to, REPLY_TTL_SECONDS).execute()


@app.task(name=dead_letters.REDRIVE_TASK, base=DomainTask, bind=True)
def redrive_dead_letters(self, *, ids: list[str] | None = None) -> int:
    """Send the named (or every open) dead letter again and mark it redriven; one already
    redriven is left alone, so a repeated request sends nothing twice."""

    def send(task_name, task_args, task_kwargs, queue):
        app.send_task(task_name, args=task_args, kwargs=task_kwargs, queue=queue or None)

    db = runtime.db()
    done = db.run(dead_letters.redrive, db.manager(dead_letters.SCHEMA),
                  ids=None if ids is None else [uuid.UUID(i) for i in ids], send=send, timeout=50)
    logger.info("dead letters redriven", extra={"count": len(done), "ids": [str(i) for i in done]})
    return len(done)
