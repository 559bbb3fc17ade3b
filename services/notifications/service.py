"""The notifications domain's public operations."""
from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING

from opentelemetry import trace

from infra import pagination, runtime
from services.notifications import repository, templates, transports
from infra.errors import Unavailable
from services.notifications.errors import DeliveryFailed, DeliveryPending, OutcomesUnrecorded

if TYPE_CHECKING:
    from config.settings import Settings

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
SCHEMA = "notifications"

# The transports, built from the runtime's settings on first use and kept for the
# process (an SMTP session is reused between mails), with the runtime and settings they
# were built from: another runtime (a forked child's), or its settings replaced (a test
# pointing them at its own servers), gets transports of its own.
_kept: tuple[runtime.Runtime, Settings, dict[str, transports.Transport]] | None = None
_lock = threading.Lock()


def _db():
    return runtime.db().manager(SCHEMA)


def _run(fn, **kwargs):
    return runtime.db().run(fn, _db(), **kwargs)


def _transports() -> dict[str, transports.Transport]:
    global _kept
    current = runtime.get()
    with _lock:
        if _kept is not None and _kept[0] is current and _kept[1] is current.settings:
            return _kept[2]
        stale, _kept = _kept, (current, current.settings, transports.from_settings(current.settings))
        built = _kept[2]
    _close(stale)
    return built


def close_transports() -> None:
    """Close the kept transports (the SMTP session says QUIT); the next send builds them again.

    Called at process stop, once nothing is being sent; calling it again does nothing.
    """
    global _kept
    with _lock:
        kept, _kept = _kept, None
    _close(kept)


def _close(kept) -> None:
    # Transports a forked child inherited share their sockets with the parent: a QUIT
    # from the child would end the parent's session, so the child only lets go of them.
    if kept is not None and kept[0].pid == os.getpid():
        for transport in kept[2].values():
            transport.close()


def _context(event: dict, recipient: dict) -> dict:
    payload = event["payload"]
    user = {"name": recipient["name"], "email": recipient["email"]}
    if event["type"].startswith("order."):
        return {"user": user, "order": payload, "short_id": payload["order_id"][:8]}
    return {"user": user}


def _renderer(event: dict):
    template = templates.BY_EVENT[event["type"]]

    def render(recipient: dict) -> list[dict]:
        context = _context(event, recipient)
        rows = [{"channel": "email", "template": template, "recipient": recipient["email"],
                 **templates.render(template, "email", context)}]
        if recipient["phone"]:
            rows.append({"channel": "sms", "template": template, "recipient": recipient["phone"],
                         **templates.render(template, "sms", context)})
        return rows

    return render


def remember_recipient(*, event: dict) -> None:
    _run(repository.update_recipient, event_id=event["id"], profile=event["payload"])


def notify(*, event: dict, outcomes: list | None = None) -> None:
    """Create this event's notifications once, then deliver those not delivered yet.

    A delivered notification is never sent again: a retry of this task finds it
    ``sent`` and skips it, and a sender claims what it sends (``repository.prepare``),
    so a retry and the redelivery sweep never send one at the same time. Transient
    failures raise ``DeliveryPending`` (the task retries for as long as the outage
    lasts); permanent ones become ``failed``. ``outcomes`` are deliveries an earlier
    attempt made but could not record (the database went away): recorded first, so a
    mail that went out is not sent again.
    """
    if outcomes:
        _run(repository.record, outcomes=[(uuid.UUID(str(i)), outcome, error) for i, outcome, error in outcomes])
    pending = _run(repository.prepare, event=event, render=_renderer(event))
    retry = _deliver(pending)
    if retry:
        raise DeliveryPending(f"{retry} notification(s) to retry")


def redeliver_stale(*, limit: int = 200) -> int:
    """Deliver pending notifications whose retry was lost (beat, ``notifications.redeliver``)."""
    stale = _run(repository.claim_stale, limit=limit,
                 older_than_seconds=runtime.get().settings.notification_redeliver_after_seconds)
    _deliver(stale)
    return len(stale)


def _deliver(pending: list[dict]) -> int:
    """Send each claimed notification and record every outcome; returns how many to retry.

    At least once: a sender killed between the server's acceptance and this record
    leaves the notification claimed; when the claim expires it is sent again, with the
    same Message-ID (the notification's id), which receiving systems recognise.
    """
    outcomes, retry = [], 0
    for notification in pending:
        try:
            with _tracer.start_as_current_span(f"notifications.send {notification['channel']}"):
                _transports()[notification["channel"]].send(notification)
            outcomes.append((notification["id"], "sent", None))
        except DeliveryFailed as exc:
            outcomes.append((notification["id"], "failed" if exc.permanent else "retry", str(exc)))
            # The error text stays in the notification's row: a server's reply can quote the address.
            logger.warning("delivery failed", extra={"notification_id": str(notification["id"]),
                                                      "channel": notification["channel"],
                                                      "permanent": exc.permanent})
            retry += not exc.permanent
    if outcomes:
        try:
            _run(repository.record, outcomes=outcomes)
        except Unavailable as exc:
            raise OutcomesUnrecorded([(str(i), o, e) for i, o, e in outcomes]) from exc
    return retry


def list_notifications(*, user_id: uuid.UUID, limit: int = 20, cursor: str | None = None) -> dict:
    rows = _run(repository.list_for_user, user_id=user_id, limit=limit, before=pagination.decode(cursor))
    return pagination.page(rows, limit)

