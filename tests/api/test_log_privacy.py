"""No personal data in logs: emails, names, phone numbers, message bodies and event payloads
never reach a log line at any level; ids do.
"""
from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from config import logging as logging_config


@pytest.fixture
def captured():
    """Everything logged at any level, through the formatter the processes use, plus the raw records."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging_config.formatter(service="users", fmt="json"))
    records: list[logging.LogRecord] = []
    spy = logging.Handler(level=logging.DEBUG)
    spy.emit = records.append
    # The session's SMTP sink (aiosmtpd, logger "mail.log") runs in this process as the
    # outside world's mail server does: what it logs is not ours.
    for h in (handler, spy):
        h.addFilter(lambda record: not record.name.startswith("mail."))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.addHandler(spy)
    root.setLevel(logging.DEBUG)
    try:
        yield stream, records
    finally:
        root.setLevel(level)
        root.removeHandler(handler)
        root.removeHandler(spy)


def _raw(record: logging.LogRecord) -> str:
    """A record as its fields hold it: before any formatter had a chance to redact it."""
    try:
        message = record.getMessage()
    except Exception:  # a record whose arguments do not fit its format still shows them
        message = f"{record.msg} {record.args}"
    return " ".join([message] + [repr(v) for v in vars(record).values()])


def test_registration_login_and_profile_update_log_no_personal_data(client, captured):
    stream, records = captured
    tag = uuid.uuid4().hex[:10]
    email = f"private-{tag}@example.com"
    name, new_name, phone = f"Ottoline Privateer {tag}", f"Perpetua Quill {tag}", "+4420794609" + str(uuid.uuid4().int % 10)
    registered = client.post("/api/users", json={"email": email, "name": name, "password": "correct horse",
                                                 "phone": phone})
    assert registered.status_code == 201
    bad = client.post("/api/auth/login", json={"email": email, "password": "not the password"})
    assert bad.status_code == 401
    good = client.post("/api/auth/login", json={"email": email.upper(), "password": "correct horse"})
    assert good.status_code == 200
    auth = {"Authorization": f"Bearer {good.json['access_token']}"}
    patched = client.patch("/api/users/me", json={"name": new_name, "phone": "+14155550199"}, headers=auth)
    assert patched.status_code == 200
    assert client.post("/api/users", json={"email": email, "name": name, "password": "correct horse"}).status_code == 409
    assert client.post("/api/auth/logout-all", headers=auth).status_code == 204

    output = stream.getvalue()
    assert records and output, "nothing was logged: the capture is broken"
    raw = "\n".join(_raw(r) for r in records)
    for secret in (email, email.upper(), name, new_name, phone, "+14155550199", "correct horse"):
        assert secret.lower() not in output.lower(), secret
        assert secret.lower() not in raw.lower(), secret
    assert registered.json["id"] in output  # ids are kept: a user can still be traced


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_formatter_redacts_personal_fields_and_addresses_that_slip_through(captured, fmt):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging_config.formatter(service="test", fmt=fmt))
    log = logging.getLogger("tests.privacy")
    log.addHandler(handler)
    try:
        log.warning("sms", extra={"to": "+14155550123", "body": "Your order 42 shipped",
                                  "email": "ada@example.com", "phone": "+14155550123",
                                  "payload": {"email": "ada@example.com"}, "task_args": [{"email": "x@y.io"}],
                                  "recipient": "grace@example.com", "order_id": "o-42", "user_id": "u-7"})
        log.error("could not reach %s", "grace@example.com")
        try:
            raise ValueError("duplicate key (lower(email))=(bob@example.com)")
        except ValueError:
            log.exception("failed for +14155550123")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    for secret in ("+14155550123", "Your order 42 shipped", "ada@example.com", "x@y.io",
                   "grace@example.com", "bob@example.com"):
        assert secret not in out, (secret, out)
    assert "o-42" in out and "u-7" in out and "could not reach" in out
    if fmt == "json":
        first = json.loads(out.splitlines()[0])
        assert first["email"] == "[redacted]" and first["body"] == "[redacted]" and first["order_id"] == "o-42"


def test_the_redaction_processor_masks_every_personal_key_at_any_depth():
    event = {"event": "user.updated", "name": "Ada Lovelace", "user_id": "u-1",
             "payload": {"email": "ada@example.com"}, "items": [{"phone": "+14155550123", "sku": "S-1"}],
             "headers": {"note": "mail ada@example.com"},
             "data": {"id": "t-1", "args": [{"email": "ada@example.com"}], "kwargs": {}}}  # Celery's trace
    out = logging_config.redact_personal_data(None, "info", event)
    assert out["name"] == "[redacted]" and out["payload"] == "[redacted]" and out["user_id"] == "u-1"
    assert out["items"] == [{"phone": "[redacted]", "sku": "S-1"}]
    assert out["data"] == {"id": "t-1", "args": "[redacted]", "kwargs": "[redacted]"}
    assert "ada@example.com" not in json.dumps(out)
