"""Notifications: real SMTP (aiosmtpd) receives the mails; the SMS provider is a local HTTP server."""
from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import Live, MailSink, Worker, free_port
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


def _order_mails(mail_sink, email: str, short: str) -> list:
    return [m for m in mail_sink.to(email) if short in m["Subject"]]


def test_an_order_fulfilled_in_its_reservation_step_sends_one_mail_saying_confirmed_and_fulfilled(api, mail_sink):
    admin = admin_token(api)
    product = create_product(api, admin, stock=5, price_cents=1999, name="Blue <Widget> & Co")
    user = register(api)
    order = place(api, user["access_token"], [(product["id"], 2)])
    assert wait_terminal(api, user["access_token"], order["id"])["status"] == "fulfilled"
    short = order["id"][:8]
    wait_for(lambda: _order_mails(mail_sink, user["email"], short), what="the order's mail")
    time.sleep(1.0)  # a second mail of the same step would be here by now
    [mail] = _order_mails(mail_sink, user["email"], short)
    assert mail["Subject"] == f"Order {short} confirmed and on its way"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert f"your order {short} has been confirmed and fulfilled" in text
    assert "2 x Blue <Widget> & Co" in text and "39.98 USD" in text
    assert "confirmed and fulfilled" in html
    assert "Blue &lt;Widget&gt; &amp; Co" in html  # escaped in HTML, and only there
    listed = wait_for(lambda: (n := _notifications(api, user["access_token"]))
                      and all(x["status"] == "sent" for x in n) and n)
    assert sorted(n["template"] for n in listed) == ["order_fulfilled", "welcome"]


def test_with_a_fulfilment_delay_the_confirmation_and_the_fulfilment_are_two_mails(
        api, stack_env, mail_sink, own_broker):
    admin = admin_token(api)
    product = create_product(api, admin, stock=5, price_cents=1999)
    user = register(api)
    wait_for(lambda: mail_sink.to(user["email"]), what="the welcome mail")  # notifications knows the user
    env = {**stack_env, "CELERY_BROKER_URL": own_broker, "FULFILMENT_DELAY_SECONDS": "1"}
    orders = Live("orders", env, WEB_CONCURRENCY="1")
    worker = None
    try:
        worker = Worker(env, concurrency=1)
        private = Api(orders.url)
        order = place(private, user["access_token"], [(product["id"], 2)])
        assert wait_terminal(private, user["access_token"], order["id"])["status"] == "fulfilled"
        short = order["id"][:8]
        mails = wait_for(lambda: m if len(m := _order_mails(mail_sink, user["email"], short)) >= 2 else None,
                         what="two mails")
    finally:
        if worker:
            worker.stop()
        orders.stop()
    assert sorted(m["Subject"] for m in mails) == [f"Order {short} confirmed", f"Order {short} is on its way"]
    fulfilled = next(m for m in mails if m["Subject"].endswith("on its way"))
    text = fulfilled.get_body(("plain",)).get_content()
    assert f"your order {short} has been fulfilled" in text and "confirmed" not in text


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


# -- one mail per outcome -------------------------------------------------------------------
def _fulfilled_payload(**extra) -> dict:
    order_id = str(uuid.uuid4())
    return {"order_id": order_id, "user_id": str(uuid.uuid4()), "status": "fulfilled", "reason": None,
            "total_cents": 3998, "currency": "USD",
            "items": [{"product_id": str(uuid.uuid4()), "name": "Widget", "quantity": 2, "unit_price_cents": 1999}],
            **extra}


@pytest.mark.parametrize("confirmation", [True, False, None])
def test_the_fulfilment_says_confirmed_and_fulfilled_only_when_it_includes_the_confirmation(confirmation):
    from services.notifications import templates

    # None: an order.fulfilled written without the field (a delayed fulfilment, or before it existed).
    order = _fulfilled_payload(**({} if confirmation is None else {"includes_confirmation": confirmation}))
    context = {"user": {"name": "Ada", "email": "ada@example.com"}, "order": order, "short_id": order["order_id"][:8]}
    email = templates.render(templates.BY_EVENT["order.fulfilled"], "email", context)
    sms = templates.render(templates.BY_EVENT["order.fulfilled"], "sms", context)
    short = order["order_id"][:8]
    if confirmation:
        assert email["subject"] == f"Order {short} confirmed and on its way"
        wording = f"order {short} has been confirmed and fulfilled"
    else:
        assert email["subject"] == f"Order {short} is on its way"
        wording = f"order {short} has been fulfilled"
    assert wording in email["body_text"] and wording in email["body_html"] and wording in sms["body_text"]
    assert "2 x Widget" in email["body_text"] and "39.98 USD" in sms["body_text"]


# -- one kept session for a batch ------------------------------------------------------------
class _SessionSink(_CountingSink):
    """Also notes the client end (address, port) of the connection each mail came over."""

    def __init__(self):
        super().__init__()
        self.peers: list = []

    async def handle_DATA(self, server, session, envelope):
        self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


class _KeepAliveProvider(_Provider):
    """An SMS provider that keeps connections open (HTTP/1.1) and notes the client end of each request."""

    protocol_version = "HTTP/1.1"
    peers: list = []

    def do_POST(self):
        type(self).peers.append(self.client_address)
        super().do_POST()


def _release_claims(rt, event_id: str) -> None:
    async def release(db):
        await db.execute("UPDATE {{tables.notifications}} SET claimed_until = now() - interval '1 second' "
                         "WHERE event_id = $1", uuid.UUID(event_id))

    rt.db.run(release, rt.db.manager("notifications"))


def test_the_mails_and_sms_of_consecutive_events_and_of_a_redelivery_pass_share_one_session_each(rt, transports):
    from services.notifications import repository, service

    _Provider.answers, _Provider.received, _KeepAliveProvider.peers = [], [], []
    sink = _SessionSink().start()
    provider = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveProvider)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    emails = [f"batch-{n}-{uuid.uuid4().hex[:8]}@example.com" for n in range(5)]
    events = [_registered_event(email, phone="+14155550123") for email in emails]
    try:
        with _settings(rt, smtp_port=sink.port, sms_webhook_url=f"http://127.0.0.1:{provider.server_port}/sms",
                       notification_redeliver_after_seconds=0):
            for event in events[:3]:  # one task after another in one worker process
                service.notify(event=event)
            for event in events[3:]:  # created and claimed by a sender that stopped; the sweep sends them
                rt.db.run(repository.prepare, rt.db.manager("notifications"), event=event,
                          render=service._renderer(event))
                _release_claims(rt, event["id"])
            service.redeliver_stale()
            assert [len(sink.to(email)) for email in emails] == [1] * 5
            assert (sink.sessions, sink.quits, len(set(sink.peers))) == (1, 0, 1), sink.peers
            assert len(_Provider.received) >= 5 and len(set(_KeepAliveProvider.peers)) == 1, _KeepAliveProvider.peers
    finally:
        provider.shutdown()
        sink.stop()
    assert sink.quits == 1  # closed when the settings changed back (process stop does the same)
