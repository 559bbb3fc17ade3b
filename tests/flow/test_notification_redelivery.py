"""A sender that stops mid-way strands no notification and sends none twice at once.

A sender claims what it is about to send; the redelivery sweep sends what a lost retry
left pending once the claim has expired; a delivery made but not recorded goes with the
task's retry and is recorded, not sent again.
"""
from __future__ import annotations

import uuid

from tests.flow.test_notifications import _registered_event, _rows, transports  # noqa: F401 (fixture)
from tests.support import wait_for


def _prepare(rt, event):
    """What a sender does first: create the event's notifications and claim them."""
    from services.notifications import repository, service

    return rt.db.run(repository.prepare, rt.db.manager("notifications"), event=event,
                     render=service._renderer(event))


def _stopped_long_ago(rt, event_id):
    async def age(db):
        await db.execute(
            "UPDATE {{tables.notifications}} SET claimed_until = now() - interval '1 second', "
            "updated_at = now() - interval '1 hour' WHERE event_id = $1", uuid.UUID(event_id))

    rt.db.run(age, rt.db.manager("notifications"))


def test_a_claimed_notification_is_not_sent_by_another_sender(rt, transports, mail_sink):  # noqa: F811
    from services.notifications import service

    event = _registered_event(f"claimed-{uuid.uuid4().hex[:8]}@example.com")
    [claimed] = _prepare(rt, event)
    service.notify(event=event)  # the same event redelivered meanwhile
    service.redeliver_stale()
    assert mail_sink.to(event["payload"]["email"]) == []
    [row] = _rows(rt, event["id"])
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert claimed["channel"] == "email"


def test_a_sender_that_stopped_before_sending_is_replaced_by_the_sweep(rt, transports, mail_sink):  # noqa: F811
    from services.notifications import service

    event = _registered_event(f"stopped-{uuid.uuid4().hex[:8]}@example.com")
    _prepare(rt, event)
    _stopped_long_ago(rt, event["id"])
    service.redeliver_stale()  # the session's beat may run the same sweep: one of them sends
    wait_for(lambda: mail_sink.to(event["payload"]["email"]), what="the mail")
    service.redeliver_stale()
    assert len(mail_sink.to(event["payload"]["email"])) == 1
    [row] = wait_for(lambda: (r := _rows(rt, event["id"])) and r[0]["status"] == "sent" and r)
    assert row["outcomes"] == ["sent"]


def test_a_delivery_made_but_not_recorded_is_recorded_by_the_retry_and_not_sent_again(
        rt, transports, mail_sink):  # noqa: F811
    from services.notifications import service

    event = _registered_event(f"unrecorded-{uuid.uuid4().hex[:8]}@example.com")
    [claimed] = _prepare(rt, event)  # the first attempt claimed it, sent it, then lost the database
    service.notify(event=event, outcomes=[(str(claimed["id"]), "sent", None)])
    [row] = _rows(rt, event["id"])
    assert (row["status"], row["outcomes"]) == ("sent", ["sent"])
    service.redeliver_stale()
    service.notify(event=event)
    assert mail_sink.to(event["payload"]["email"]) == []  # this test's sink never saw a second send
