"""Notifications: real SMTP (aiosmtpd) receives the mails; the SMS provider is a local HTTP server."""
from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import MailSink, free_port
from tests.support import Api, admin_token, create_product, place, register, wait_for, wait_terminal


@pytest.fixture(scope="module")
def api(live_gateway, live_worker):
    return Api(live_gateway.url)


def _notifications(api, token):
    return api.ok("GET", "/api/notifications?limit=100", token=token)["items"]


def test_registration_sends_a_welcome_mail_listed_as_sent(api, mail_sink):
    user = register(api)
    mail = wait_for(lambda: mail_sink.to(user["email"]), what="the welcome mail")
    assert len(mail) == 1
    message = mail[0]
    assert message["Subject"] == "Welcome, Test"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Hello Test" in text and user["email"] in text
    assert "<strong>" in html and user["email"] in html
    listed = wait_for(lambda: [n for n in _notifications(api, user["access_token"]) if n["status"] == "sent"])
    assert listed[0]["channel"] == "email" and listed[0]["template"] == "welcome"
    assert {"id", "channel", "template", "recipient", "subject", "status", "attempts", "created_at",
            "sent_at"} <= set(listed[0])


def test_an_order_sends_its_confirmation_and_fulfilment_mails(api, mail_sink):
    admin = admin_token(api)
    product = create_product(api, admin, stock=5, price_cents=1999, name="Blue <Widget> & Co")
    user = register(api)
    order = place(api, user["access_token"], [(product["id"], 2)])
    assert wait_terminal(api, user["access_token"], order["id"])["status"] == "fulfilled"
    mails = wait_for(lambda: m if len(m := mail_sink.to(user["email"])) >= 3 else None, what="three mails")
    subjects = sorted(m["Subject"] for m in mails)
    short = order["id"][:8]
    assert subjects == sorted(["Welcome, Test", f"Order {short} confirmed", f"Order {short} is on its way"])
    confirmed = next(m for m in mails if m["Subject"].endswith("confirmed"))
    text = confirmed.get_body(("plain",)).get_content()
    html = confirmed.get_body(("html",)).get_content()
    assert "2 x Blue <Widget> & Co" in text and "39.98 USD" in text
    assert "Blue &lt;Widget&gt; &amp; Co" in html  # escaped in HTML, and only there
    templates = wait_for(lambda: {n["template"] for n in _notifications(api, user["access_token"])
                                  if n["status"] == "sent"} >= {"welcome", "order_confirmed", "order_fulfilled"})
    assert templates


# -- in-process deliveries (the task's service function, real SMTP, real database) --------
def _registered_event(email: str, phone: str | None = None) -> dict:
    user_id = str(uuid.uuid4())
    return {"id": str(uuid.uuid4()), "type": "user.registered",
            "payload": {"user_id": user_id, "email": email, "name": "Grace", "phone": phone,
                        "updated_at": datetime.now(timezone.utc).isoformat()}}


@contextmanager
def _settings(rt, **changes):
    """This process's runtime reads these settings meanwhile: the notification transports
    are built from them on the next send (and closed after)."""
    from services.notifications import service

    previous, rt.settings = rt.settings, replace(rt.settings, **changes)
    try:
        yield
    finally:
        rt.settings = previous
        service.close_transports()


@pytest.fixture
def transports(rt, mail_sink):
    """Mail of this process goes to the session's mail sink, SMS to the log."""
    with _settings(rt, smtp_host="127.0.0.1", smtp_port=mail_sink.port, sms_webhook_url=None):
        yield


def _rows(rt, event_id):
    async def read(db):
        return await db.fetch_all(
            "SELECT n.channel, n.status, n.attempts, n.last_error, "
            "(SELECT array_agg(outcome ORDER BY attempt) FROM {{tables.delivery_attempts}} a "
            " WHERE a.notification_id = n.id) AS outcomes "
            "FROM {{tables.notifications}} n WHERE n.event_id = $1 ORDER BY channel", uuid.UUID(event_id))

    return rt.db.run(read, rt.db.manager("notifications"))


def test_the_same_event_delivered_twice_sends_one_mail(rt, transports, mail_sink):
    from services.notifications import service

    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    event = _registered_event(email)
    service.notify(event=event)
    service.notify(event=event)
    assert len(mail_sink.to(email)) == 1
    assert [(r["status"], r["attempts"]) for r in _rows(rt, event["id"])] == [("sent", 1)]


def test_a_permanent_smtp_rejection_fails_at_once_with_the_reason(rt, transports, mail_sink):
    from services.notifications import service

    email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    mail_sink.refuse.add(email)
    event = _registered_event(email)
    service.notify(event=event)  # no exception: nothing to retry
    [row] = _rows(rt, event["id"])
    assert row["status"] == "failed" and row["attempts"] == 1 and "550" in row["last_error"]
    assert row["outcomes"] == ["failed"]


def test_smtp_down_then_up_delivers_after_a_retry(rt, transports):
    from services.notifications import service
    from services.notifications.errors import DeliveryPending

    port = free_port()
    email = f"later-{uuid.uuid4().hex[:8]}@example.com"
    event = _registered_event(email)
    with _settings(rt, smtp_port=port):
        with pytest.raises(DeliveryPending):
            service.notify(event=event)
        sink = MailSink(port).start()
        try:
            service.notify(event=event)  # what the task's retry does
            assert len(sink.to(email)) == 1
        finally:
            sink.stop()
    [row] = _rows(rt, event["id"])
    assert row["status"] == "sent" and row["attempts"] == 2 and row["outcomes"] == ["retry", "sent"]


class _CountingSink(MailSink):
    """A mail sink that counts the SMTP sessions opened (EHLO) and ended (QUIT)."""

    def __init__(self):
        super().__init__()
        self.sessions = self.quits = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"


def test_closing_the_transports_ends_the_smtp_session_and_the_next_mail_opens_another(rt, transports):
    from services.notifications import service

    sink = _CountingSink().start()
    try:
        with _settings(rt, smtp_port=sink.port):
            first, second = (f"close-{n}-{uuid.uuid4().hex[:8]}@example.com" for n in (1, 2))
            service.notify(event=_registered_event(first))
            assert (len(sink.to(first)), sink.sessions, sink.quits) == (1, 1, 0)  # the session is kept

            service.close_transports()
            wait_for(lambda: sink.quits == 1, timeout=5, what="the QUIT")
            service.close_transports()  # nothing left to close

            service.notify(event=_registered_event(second))  # built again from the settings
            assert (len(sink.to(second)), sink.sessions, sink.quits) == (1, 2, 1)
    finally:
        sink.stop()


class _Provider(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"body": body, "auth": self.headers.get("Authorization")})
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_sms_goes_to_the_webhook_and_a_provider_500_is_retried_once_delivered(rt, transports, mail_sink):
    from config.settings import Secret
    from services.notifications import service
    from services.notifications.errors import DeliveryPending

    _Provider.answers, _Provider.received = [500, 200], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with _settings(rt, sms_webhook_url=f"http://127.0.0.1:{server.server_port}/sms",
                       sms_webhook_token=Secret("tok")):
            email = f"sms-{uuid.uuid4().hex[:8]}@example.com"
            event = _registered_event(email, phone="+14155550123")
            with pytest.raises(DeliveryPending):
                service.notify(event=event)  # email sent, sms answered 500
            service.notify(event=event)  # the retry: sms only
    finally:
        server.shutdown()
    assert len(mail_sink.to(email)) == 1  # the delivered mail was not sent again
    assert len(_Provider.received) == 2
    request = _Provider.received[-1]
    assert request["auth"] == "Bearer tok" and request["body"]["to"] == "+14155550123"
    assert "Welcome to OMS, Grace" in request["body"]["body"]
    rows = {r["channel"]: r for r in _rows(rt, event["id"])}
    assert rows["email"]["status"] == "sent" and rows["email"]["attempts"] == 1
    assert rows["sms"]["status"] == "sent" and rows["sms"]["outcomes"] == ["retry", "sent"]


def test_the_smtp_session_is_kept_between_mails_and_replaced_when_the_server_dropped_it():
    from services.notifications import transports as t
    from services.notifications.errors import DeliveryFailed

    def mail(to, subject="Ihre Bestellung ist bestätigt"):
        return {"id": uuid.uuid4(), "recipient": to, "subject": subject, "body_text": "grüße", "body_html": "<p>hi</p>"}

    sink = MailSink().start()
    transport = t.SmtpTransport(host="127.0.0.1", port=sink.port, sender="t@oms")
    try:
        transport.send(mail("a@example.com"))
        session = transport._smtp
        sink.refuse.add("nobody@example.com")
        with pytest.raises(DeliveryFailed) as refused:
            transport.send(mail("nobody@example.com"))
        assert refused.value.permanent
        transport.send(mail("b@example.com"))
        assert transport._smtp is session  # one session for all three, the refusal included

        sink.stop()  # the server goes away (and comes back): the kept session is dead
        sink = MailSink(sink.port).start()
        transport.send(mail("c@example.com"))
        [message] = sink.to("c@example.com")
        assert message["Subject"] == "Ihre Bestellung ist bestätigt"
        assert message.get_body(("plain",)).get_content().strip() == "grüße"
        assert message.get_body(("html",)).get_content().strip() == "<p>hi</p>"
    finally:
        transport.close()
        sink.stop()
