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
import threading
import time
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Protocol

import urllib3

from services.notifications.errors import DeliveryFailed

logger = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, notification: dict) -> None: ...


class SmtpTransport:
    """Sends over one SMTP session per process, kept open between mails.

    A session per mail (connect, EHLO, QUIT) cost more round trips than the mail
    itself. An idle session older than ``idle_seconds`` is closed before use, since
    servers drop idle clients (Postfix after 300 s); a reused session that turns out
    closed is replaced once. The message is built with the ``email.mime`` classes:
    ``EmailMessage``'s header registry cost about 1 ms per mail, four times as much.
    """

    def __init__(self, *, host: str, port: int, sender: str, starttls: bool = False,
                 username: str | None = None, password: str | None = None, timeout: float = 10.0,
                 idle_seconds: float = 30.0):
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password, self.timeout = starttls, username, password, timeout
        self.idle_seconds = idle_seconds
        self._smtp: smtplib.SMTP | None = None
        self._used_at = 0.0
        self._lock = threading.Lock()

    def message(self, notification: dict) -> MIMEMultipart | MIMEText:
        text = MIMEText(notification["body_text"], "plain", "utf-8")
        if notification.get("body_html"):
            message = MIMEMultipart("alternative")
            message.attach(text)
            message.attach(MIMEText(notification["body_html"], "html", "utf-8"))
        else:
            message = text
        subject = notification["subject"] or ""
        message["From"] = self.sender
        message["To"] = notification["recipient"]
        message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8")
        message["Message-ID"] = f"<{notification['id']}@oms>"
        message["Date"] = formatdate(localtime=False)
        return message

    def send(self, notification: dict) -> None:
        message = self.message(notification)
        try:
            with self._lock:
                self._send(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryFailed(f"recipient refused: {codes}", permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", permanent=exc.smtp_code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP unavailable: {type(exc).__name__}", permanent=False) from None

    def _send(self, message) -> None:
        reused = self._smtp is not None and time.monotonic() - self._used_at < self.idle_seconds
        if not reused:
            self.close()
        try:
            self._attempt(message, reuse=reused)
        except OSError as exc:  # smtplib's errors are OSErrors too: only a dropped session is retried
            dropped = isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(exc, smtplib.SMTPException)
            if not (reused and dropped):
                raise
            # The kept session had been dropped (server restart, idle timeout): once more on a new one.
            self._attempt(message, reuse=False)
        self._used_at = time.monotonic()

    def _attempt(self, message, *, reuse: bool) -> None:
        try:
            (self._smtp if reuse else self._connect()).send_message(message)
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused):
            self._reset()  # refused: the session itself is still good
            raise
        except (smtplib.SMTPException, OSError):
            self.close()
            raise

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _reset(self) -> None:
        """After a refused mail the session stays usable once the transaction is reset."""
        try:
            self._smtp.rset()
        except (smtplib.SMTPException, OSError, AttributeError):
            self.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


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
