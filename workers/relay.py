"""The outbox relay: which tasks each event becomes, and publishing them.

``publish`` runs right after a business transaction commits (in the web or worker
process that committed it) and marks the rows published; whatever it could not
send (broker down) stays unpublished for the beat sweep (``outbox.sweep``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from kombu.exceptions import KombuError
from opentelemetry import context, propagate

from services import messaging, runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    task: str
    queue: str
    delayed: bool = False  # scheduled FULFILMENT_DELAY_SECONDS later (a countdown, never a sleep)


# Every consumer of every event. An event with no route is marked published as is.
NOTIFY = Route("notifications.notify", "notifications")
ROUTES: dict[str, tuple[Route, ...]] = {
    "user.registered": (NOTIFY,),
    "user.updated": (Route("notifications.remember_recipient", "notifications"),),
    "order.placed": (Route("inventory.reserve", "inventory"),),
    "inventory.reserved": (Route("orders.apply_reservation", "orders"),),
    "inventory.rejected": (Route("orders.apply_reservation", "orders"),),
    "order.reserved": (Route("orders.fulfil", "orders", delayed=True), NOTIFY),
    "order.rejected": (NOTIFY,),
    "order.fulfilled": (Route("inventory.commit", "inventory"), NOTIFY),
    "order.cancelled": (Route("inventory.release", "inventory"), NOTIFY),
}

OUTBOX_SCHEMAS = ("users", "orders", "inventory")
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


def publish(schema: str, events: list[dict]) -> None:
    """After commit: publish now if we can. Nothing here may fail the committed request."""
    try:
        sent = send_events(events)
    except Exception:
        logger.error("publishing failed unexpectedly; the sweep will retry", exc_info=True)
        return
    if sent:
        db = runtime.db()
        try:
            db.run(messaging.mark_published, db.manager(schema), sent)
        except Exception:  # published but not marked: the sweep sends them again, consumers dedupe
            logger.warning("could not mark events published", exc_info=True)


def sweep(*, limit: int = 500, min_age_seconds: float = 2.0) -> int:
    db = runtime.db()
    total = 0
    for schema in OUTBOX_SCHEMAS:
        total += db.run(
            messaging.sweep, db.manager(schema), publish=lambda evs: send_events(evs, retry=True),
            limit=limit, min_age_seconds=min_age_seconds, timeout=60,
        )
    return total
