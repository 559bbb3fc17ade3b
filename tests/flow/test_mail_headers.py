"""Mail headers no user value can add to: a real SMTP server (aiosmtpd) receives what is sent.

The API refuses line breaks in names now, so the hostile values here go in below it:
through the template and transport API, and through the notification service with
a recipient stored as an older version could have stored it.
"""
from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from tests.conftest import MailSink

INJECTED = "\r\nReply-To: evil@x"


@pytest.fixture
def sink():
    server = MailSink().start()
    yield server
    server.stop()


def _transport(sink, sender="OMS <no-reply@oms.local>"):
    from services.notifications.transports import SmtpTransport

    return SmtpTransport(host="127.0.0.1", port=sink.port, sender=sender)


def _mail(to: str, **rendered) -> dict:
    return {"id": uuid.uuid4(), "recipient": to, "subject": "Hello", "body_text": "hi", "body_html": None,
            **rendered}


def _address() -> str:
    return f"eve-{uuid.uuid4().hex[:8]}@example.com"


def _assert_no_injection(message) -> None:
    assert message["Reply-To"] is None and message["Bcc"] is None and message["X-Evil"] is None
    assert len(message.get_all("Subject")) == 1 and len(message.get_all("From")) == 1
    assert len(message.get_all("To")) == 1
    for name, value in message.items():
        assert "\r" not in str(value) and "\n" not in str(value), (name, value)


def test_a_name_with_a_line_break_in_the_welcome_subject_adds_no_header(sink):
    from services.notifications import templates

    address = _address()
    rendered = templates.render("welcome", "email", {"user": {"name": "Eve" + INJECTED, "email": address}})
    assert "\r" not in rendered["subject"] and "\n" not in rendered["subject"]
    transport = _transport(sink)
    try:
        transport.send(_mail(address, **rendered))
    finally:
        transport.close()
    [message] = sink.to(address)
    _assert_no_injection(message)
    assert message["Subject"] == "Welcome, Eve Reply-To: evil@x"


@pytest.mark.parametrize("subject", [
    "Order" + INJECTED,
    "Order\nBcc: spy@example.com",
    "Order\rX-Evil: 1",
    "Bestellung bestätigt" + INJECTED,  # non-ASCII: the RFC 2047 path
    "Order\x00\x1b\x85\u2028X-Evil: 1",
])
def test_a_subject_built_by_hand_cannot_add_a_header_either(sink, subject):
    address = _address()
    transport = _transport(sink)
    try:
        transport.send(_mail(address, subject=subject))
    finally:
        transport.close()
    [message] = sink.to(address)
    _assert_no_injection(message)
    assert message["Subject"].startswith(("Order", "Bestellung"))


def test_a_sender_display_name_with_a_line_break_adds_no_header(sink):
    address = _address()
    transport = _transport(sink, sender="OMS\r\nBcc: spy@example.com <no-reply@oms.local>")
    try:
        transport.send(_mail(address))
    finally:
        transport.close()
    [message] = sink.to(address)
    _assert_no_injection(message)
    assert message["From"].addresses[0].addr_spec == "no-reply@oms.local"


@pytest.mark.parametrize("recipient", [
    "eve@example.com\r\nBcc: spy@example.com",
    "eve@example.com\nX-Evil: 1",
    "eve@example.com, spy@example.com",
    "Eve <eve@example.com>",
    "not an address",
    "eve@",
    "",
    "eve\ud800@example.com",
])
def test_an_invalid_recipient_is_a_permanent_failure_and_nothing_is_sent(sink, recipient):
    from services.notifications.errors import DeliveryFailed

    transport = _transport(sink)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            transport.send(_mail(recipient))
    finally:
        transport.close()
    assert failed.value.permanent
    assert sink.messages == []


def test_a_body_that_cannot_be_encoded_is_a_permanent_failure_not_a_crash(sink):
    from services.notifications.errors import DeliveryFailed

    transport = _transport(sink)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            transport.send(_mail(_address(), body_text="lone \ud800 surrogate"))
    finally:
        transport.close()
    assert failed.value.permanent and sink.messages == []


# -- through the notification service (real database, real SMTP) -------------------------
def _registered(email: str, name: str) -> dict:
    return {"id": str(uuid.uuid4()), "type": "user.registered",
            "payload": {"user_id": str(uuid.uuid4()), "email": email, "name": name, "phone": None,
                        "updated_at": datetime.now(timezone.utc).isoformat()}}


def _rows(rt, event_id: str) -> list[dict]:
    async def read(db):
        return await db.fetch_all("SELECT status, attempts, subject, last_error FROM {{tables.notifications}} "
                                  "WHERE event_id = $1", uuid.UUID(event_id))

    return rt.db.run(read, rt.db.manager("notifications"))


@pytest.fixture
def service(rt, sink):
    """The notification service of this process, its mail going to this test's sink."""
    from services.notifications import service as notifications

    # The transports are built from the runtime's settings, on the next send.
    previous, rt.settings = rt.settings, replace(rt.settings, smtp_host="127.0.0.1", smtp_port=sink.port,
                                                 mail_from="OMS <no-reply@oms.local>", sms_webhook_url=None)
    try:
        yield notifications
    finally:
        rt.settings = previous
        notifications.close_transports()


def test_a_stored_name_with_a_line_break_is_sent_with_one_subject_and_no_reply_to(rt, sink, service):
    address = _address()
    event = _registered(address, "Eve" + INJECTED)
    service.notify(event=event)
    [message] = sink.to(address)
    _assert_no_injection(message)
    [row] = _rows(rt, event["id"])
    assert row["status"] == "sent" and row["subject"] == "Welcome, Eve Reply-To: evil@x"


def test_a_stored_invalid_address_is_recorded_failed_at_once(rt, sink, service):
    event = _registered("eve@example.com\r\nBcc: spy@example.com", "Eve")
    service.notify(event=event)  # no exception: nothing to retry
    [row] = _rows(rt, event["id"])
    assert row["status"] == "failed" and row["attempts"] == 1 and "address" in row["last_error"]
    assert sink.messages == []


@pytest.mark.parametrize("sender", ["a@b.io, spy@example.com", "OMS <not an address>", "", "OMS <a@b.io> x"])
def test_a_configured_sender_that_is_not_one_address_is_refused_when_the_transport_is_built(sender):
    from services.notifications.transports import SmtpTransport

    with pytest.raises(ValueError):
        SmtpTransport(host="127.0.0.1", port=25, sender=sender)


def test_a_configured_sender_name_keeps_its_words_on_one_line():
    from services.notifications.transports import sender_header

    assert sender_header("OMS <no-reply@oms.local>") == "OMS <no-reply@oms.local>"
    assert sender_header("t@oms") == "t@oms"
    assert sender_header('"Shop, Inc." <shop@example.com>') == '"Shop, Inc." <shop@example.com>'
    assert sender_header("Shop\r\nBcc: spy@example.com <shop@example.com>") == (
        '"Shop Bcc: spy@example.com" <shop@example.com>')
