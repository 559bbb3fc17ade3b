"""The outbox relay: publishing each event to the tasks that consume it.

``publish`` runs right after a business transaction commits (in the web or worker
process that committed it) and marks the rows published; whatever it could not
send (broker down) stays unpublished for the beat sweep (``outbox.sweep``).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from opentelemetry import context, propagate

from infra import messaging, runtime
from infra.wiring import Route, routes
from services import wiring

logger = logging.getLogger(__name__)


# Every consumer of every event, from the domains' declarations (services/*/wiring.py).
# An event with no route is marked published as is.
ROUTES = routes(wiring())
OUTBOX_SCHEMAS = tuple(domain.name for domain in wiring() if domain.outbox)
_PUBLISH_ERRORS = (KombuError, OSError, ConnectionError)


def send_events(events: list[dict], *, retry: bool = False) -> list[str]:
    """Send events to their consumers, several for one consumer as one message; returns the
    ids of the events every consumer of which was sent to (the others wait for the sweep).

    A message carries a list of up to EVENT_BATCH_MAX events; the consumer task handles
    each in its own transaction with its own inbox row (workers/tasks.py). Events a
    transaction or a sweep makes ready together travel together; a lone event goes alone.
    """
    from workers.celery_app import app

    settings = runtime.get().settings
    delay, size = settings.fulfilment_delay_seconds, settings.event_batch_max
    messages: dict[Route, list[dict]] = {}
    for event in events:
        for route in ROUTES.get(event["type"], ()):
            if not route.delayed or delay > 0:
                messages.setdefault(route, []).append(event)
    failed: set[str] = set()
    for route, batch in messages.items():
        for chunk in (batch[i:i + size] for i in range(0, len(batch), size)):
            # Publish inside the trace the first event was written in; each event's own
            # trace goes on in its consumer (workers/tasks.py).
            token = context.attach(propagate.extract(chunk[0].get("headers") or {}))
            try:
                app.send_task(route.task, args=[chunk], queue=route.queue,
                              countdown=delay if route.delayed else None, retry=retry)
            except _PUBLISH_ERRORS as exc:
                logger.warning("publish failed; the sweep will retry",
                               extra={"task": route.task, "events": len(chunk), "error": str(exc)})
                failed.update(e["id"] for e in chunk)
            finally:
                context.detach(token)
    return [e["id"] for e in events if e["id"] not in failed]


class Publisher:
    """Publishes committed events from a thread of its own, and marks them published.

    ``add`` hands events over and returns at once: a request or a task never waits for
    the broker. The thread sends what is pending the moment it is free, so a lone event
    goes at once and events that became ready while it was sending go together, as one
    message per consumer; it then marks what it sent with one UPDATE per schema. Events
    sent but not marked (the process died first) are published again by the sweep, and
    consumers dedupe by event id.
    """

    def __init__(self):
        self.pending: dict[str, list[dict]] = {}
        self.condition = threading.Condition()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.busy = False

    def add(self, schema: str, events: list[dict]) -> None:
        with self.condition:
            self.pending.setdefault(schema, []).extend(events)
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)
                self.thread.start()
            self.condition.notify()

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.pending:
                    self.condition.wait()
                batch, self.pending = self.pending, {}
                self.busy = True
            try:
                self._send(batch)
            finally:
                with self.condition:
                    self.busy = False
                    self.condition.notify_all()

    def _send(self, batch: dict[str, list[dict]]) -> None:
        try:
            sent = set(send_events([e for events in batch.values() for e in events]))
        except Exception:  # nothing here may be lost: the rows stay unpublished for the sweep
            logger.error("publishing failed unexpectedly; the sweep will retry", exc_info=True)
            return
        db = runtime.db()
        for schema, events in batch.items():
            ids = [e["id"] for e in events if e["id"] in sent]
            if not ids:
                continue
            try:
                db.run(messaging.mark_published, db.manager(schema), ids)
            except Exception:  # published but not marked: the sweep sends them again, consumers dedupe
                logger.warning("could not mark events published", exc_info=True)

    def flush(self, timeout: float = 10.0) -> None:
        """Send what is pending now (at process stop, before the pool closes)."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while self.busy and time.monotonic() < deadline:
                self.condition.wait(0.1)
            batch, self.pending = self.pending, {}
        if batch:
            self._send(batch)


publisher = Publisher()


def publish(schema: str, events: list[dict]) -> None:
    """After commit: hand the events to this process's publisher. Never fails the request."""
    if events:
        publisher.add(schema, events)


# A key the relay keeps in a Redis broker: when it is gone, the broker lost its data
# (restarted without persistence, flushed, replaced) and every queued message with it.
BROKER_EPOCH_KEY = "oms:broker-epoch"
_broker_client = None


def _broker_redis():
    """A Redis client on the broker, or None when the broker is not Redis."""
    global _broker_client
    from workers.celery_app import app

    url = app.conf.broker_url or ""
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    if _broker_client is None:
        import redis

        _broker_client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
    return _broker_client


def replay_if_broker_lost(db, *, window_seconds: float) -> int:
    """Publish again what the broker may have lost with its data; returns the events requeued.

    Every event published in the last ``window_seconds`` goes back to the outbox sweep:
    consumers absorb those they had already handled (inbox), and those lost with the
    broker are handled now. The key is set only after the outbox rows were reset, so a
    database outage meanwhile only postpones the replay.
    """
    client = _broker_redis()
    if client is None or client.exists(BROKER_EPOCH_KEY):
        return 0
    requeued = sum(db.run(messaging.unpublish_since, db.manager(schema), seconds=window_seconds)
                   for schema in OUTBOX_SCHEMAS)
    client.set(BROKER_EPOCH_KEY, str(time.time()))
    if requeued:
        logger.warning("the broker lost its data; recent events go out again", extra={"events": requeued})
    return requeued


def sweep(*, limit: int = 500, min_age_seconds: float = 2.0, max_batches: int = 20) -> int:
    db = runtime.db()
    try:
        replay_if_broker_lost(db, window_seconds=runtime.get().settings.broker_loss_replay_seconds)
    except (RedisError, *_PUBLISH_ERRORS) as exc:  # the broker is down: nothing can be published now anyway
        logger.warning("broker unreachable; sweep skipped", extra={"error": type(exc).__name__})
        return 0
    total = 0
    for schema in OUTBOX_SCHEMAS:
        for _ in range(max_batches):
            sent = db.run(
                messaging.sweep, db.manager(schema), publish=lambda evs: send_events(evs, retry=True),
                limit=limit, min_age_seconds=min_age_seconds, timeout=60,
            )
            total += sent
            if sent < limit:
                break
    return total
