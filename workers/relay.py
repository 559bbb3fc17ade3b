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
from infra.wiring import routes
from services import wiring

logger = logging.getLogger(__name__)


# Every consumer of every event, from the domains' declarations (services/*/wiring.py).
# An event with no route is marked published as is.
ROUTES = routes(wiring())
OUTBOX_SCHEMAS = tuple(domain.name for domain in wiring() if domain.outbox)
_PUBLISH_ERRORS = (KombuError, OSError, ConnectionError)


def send_events(events: list[dict], *, retry: bool = False) -> list[str]:
    """Send each event to its consumers; returns the ids sent (stops at the first failure)."""
    from workers.celery_app import app

    delay = runtime.get().settings.fulfilment_delay_seconds
    sent = []
    for event in events:
        # Publish inside the trace the event was written in (the sweep has its own).
        token = context.attach(propagate.extract(event.get("headers") or {}))
        try:
            for route in ROUTES.get(event["type"], ()):
                if route.delayed and delay <= 0:
                    continue
                app.send_task(
                    route.task, args=[event], queue=route.queue,
                    countdown=delay if route.delayed and delay > 0 else None, retry=retry,
                )
        except _PUBLISH_ERRORS as exc:
            logger.warning("publish failed; the sweep will retry", extra={"event_id": event["id"], "error": str(exc)})
            break
        finally:
            context.detach(token)
        sent.append(event["id"])
    return sent


class Marker:
    """Marks published events in batches, off the request and task path.

    Marking each event right after publishing cost one more transaction per event; a
    per-process flusher marks everything published in the last ~100 ms with one
    UPDATE per schema. Events published but not marked yet (the process died first)
    are older than the sweep's minimum age before the sweep looks at them, and are
    then published again: consumers dedupe by event id, so that costs nothing but a
    duplicate message.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.pending: dict[str, list[str]] = {}
        self.condition = threading.Condition()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def add(self, schema: str, ids: list[str]) -> None:
        with self.condition:
            self.pending.setdefault(schema, []).extend(ids)
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="outbox-marker", daemon=True)
                self.thread.start()
            self.condition.notify()

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.pending:
                    self.condition.wait()
                batch, self.pending = self.pending, {}
            self.flush(batch)
            time.sleep(self.interval)  # let the next batch gather

    def flush(self, batch: dict[str, list[str]] | None = None) -> None:
        if batch is None:
            with self.condition:
                batch, self.pending = self.pending, {}
        db = runtime.db()
        for schema, ids in batch.items():
            try:
                db.run(messaging.mark_published, db.manager(schema), ids)
            except Exception:  # published but not marked: the sweep sends them again, consumers dedupe
                logger.warning("could not mark events published", exc_info=True)


marker = Marker()


def publish(schema: str, events: list[dict]) -> None:
    """After commit: publish now if we can. Nothing here may fail the committed request."""
    try:
        sent = send_events(events)
    except Exception:
        logger.error("publishing failed unexpectedly; the sweep will retry", exc_info=True)
        return
    if sent:
        marker.add(schema, sent)


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
