"""Delivery transports behind one small interface: ``send(notification)``.

Email goes over SMTP (STARTTLS and credentials from configuration). SMS goes to an
HTTP webhook provider, or to the log when no webhook is configured. Each raises
``DeliveryFailed(permanent=...)``: SMTP 5xx and HTTP 4xx are permanent, refused
connections, SMTP 4xx, HTTP 5xx and timeouts are transient.
"""
from __future__ import annotations

import json
import logging
import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol

import urllib3

from services.notifications.errors import DeliveryFailed

logger = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, notification: dict) -> None: ...


class SmtpTransport:
    def __init__(self, *, host: str, port: int, sender: str, starttls: bool = False,
                 username: str | None = None, password: str | None = None, timeout: float = 10.0):
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password, self.timeout = starttls, username, password, timeout

    def send(self, notification: dict) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = notification["recipient"]
        message["Subject"] = notification["subject"] or ""
        message["Message-ID"] = f"<{notification['id']}@oms>"
        message.set_content(notification["body_text"])
        if notification.get("body_html"):
            message.add_alternative(notification["body_html"], subtype="html")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryFailed(f"recipient refused: {codes}", permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", permanent=exc.smtp_code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP unavailable: {type(exc).__name__}", permanent=False) from None


class WebhookSmsTransport:
    """POSTs ``{"to", "body", "id"}`` as JSON with a Bearer token to the provider's URL."""

    def __init__(self, *, url: str, token: str | None, timeout: float = 5.0):
        self.url, self.token = url, token
        self.http = urllib3.PoolManager(maxsize=4, timeout=urllib3.Timeout(total=timeout), retries=False)

    def send(self, notification: dict) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(notification["id"])}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = json.dumps({"to": notification["recipient"], "body": notification["body_text"],
                           "id": str(notification["id"])})
        try:
            response = self.http.request("POST", self.url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise DeliveryFailed(f"SMS provider unreachable: {type(exc).__name__}", permanent=False) from None
        if response.status >= 500:
            raise DeliveryFailed(f"SMS provider answered {response.status}", permanent=False)
        if response.status >= 400:
            raise DeliveryFailed(f"SMS provider refused: {response.status}", permanent=True)


class LogSmsTransport:
    """Development SMS: the message goes to the log."""

    def send(self, notification: dict) -> None:
        logger.info("sms", extra={"to": notification["recipient"], "body": notification["body_text"]})


def from_settings(settings) -> dict[str, Transport]:
    email = SmtpTransport(
        host=settings.smtp_host, port=settings.smtp_port, sender=settings.mail_from,
        starttls=settings.smtp_starttls, username=settings.smtp_username,
        password=str(settings.smtp_password) if settings.smtp_password else None,
    )
    sms = (WebhookSmsTransport(url=settings.sms_webhook_url, token=settings.sms_webhook_token)
           if settings.sms_webhook_url else LogSmsTransport())
    return {"email": email, "sms": sms}
