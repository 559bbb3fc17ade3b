"""Delivery transports behind one small interface: ``send(notification)``.

Email goes over SMTP (STARTTLS and credentials from configuration). SMS goes to an
HTTP webhook provider, or to the log when no webhook is configured. Each raises
``DeliveryFailed(permanent=...)``: SMTP 5xx and HTTP 4xx are permanent, refused
connections, SMTP 4xx, HTTP 5xx and timeouts are transient.
"""
from __future__ import annotations

import json
import logging
import re
import io
import smtplib
import ssl
import threading
import time
from email.errors import MessageError
from email.generator import BytesGenerator
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate
from typing import Protocol

import urllib3

from services.notifications.errors import DeliveryFailed

logger = logging.getLogger(__name__)


class Transport(Protocol):
    def send(self, notification: dict) -> None: ...

    def close(self) -> None:
        """Let go of connections kept between sends; the next send opens new ones."""


# Whatever could end a header line or smuggle one in: C0 and C1 controls (CR, LF, NEL
# among them), DEL, Unicode line and paragraph separators, and lone surrogates.
_UNSAFE_IN_HEADER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
# One bare address (no display name, no list, no comments), as a mailbox takes it.
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@(?:[^\W_]|-)+(?:\.(?:[^\W_]|-)+)*")


_NAME_ADDR = re.compile(r"(.*?)\s*<([^<>]*)>")


def header_text(value: str) -> str:
    """``value`` as one header line: controls and line breaks become single spaces.

    Done here for every header we build, whatever the Python version's own checks,
    so no user value (a name in a subject, say) can add a header.
    """
    return " ".join(_UNSAFE_IN_HEADER.sub(" ", value).split())


def mail_address(value: str) -> str:
    """``value`` if it is one plain address, else ``ValueError``."""
    if not isinstance(value, str) or _ADDRESS.fullmatch(value) is None:
        raise ValueError("not a valid email address")
    return value


def sender_header(value: str) -> str:
    """The From header for a configured ``Name <address>`` or bare address; ``ValueError`` if invalid.

    Parsed here rather than by ``email.utils.parseaddr``, which reads a display name
    holding ``:`` or ``,`` as a group or list and returns another address.
    """
    match = _NAME_ADDR.fullmatch(header_text(value))
    name, address = (match.group(1).strip().strip('"'), match.group(2)) if match else ("", header_text(value))
    return formataddr((name, mail_address(address)))


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
        self.from_header = sender_header(sender)
        match = _NAME_ADDR.fullmatch(header_text(sender))
        self.envelope_from = mail_address(match.group(2) if match else header_text(sender))
        self.idle_seconds = idle_seconds
        self._smtp: smtplib.SMTP | None = None
        self._data_started = False  # within one send, under _lock
        self._used_at = 0.0
        self._lock = threading.Lock()

    def message(self, notification: dict) -> MIMEMultipart | MIMEText:
        """The mail; ``DeliveryFailed(permanent=True)`` if it cannot be built (a bad address, say)."""
        try:
            recipient = mail_address(notification["recipient"])
        except ValueError:
            raise DeliveryFailed("recipient is not a valid email address", permanent=True) from None
        try:
            text = MIMEText(notification["body_text"], "plain", "utf-8")
            if notification.get("body_html"):
                message = MIMEMultipart("alternative")
                message.attach(text)
                message.attach(MIMEText(notification["body_html"], "html", "utf-8"))
            else:
                message = text
            subject = header_text(notification["subject"] or "")
            message["From"] = self.from_header
            message["To"] = recipient
            message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8")
            message["Message-ID"] = f"<{header_text(str(notification['id']))}@oms>"
            message["Date"] = formatdate(localtime=False)
        except (ValueError, MessageError) as exc:  # UnicodeEncodeError is a ValueError
            raise DeliveryFailed(f"message not built: {type(exc).__name__}", permanent=True) from None
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
        except (ValueError, MessageError) as exc:  # the message would not flatten: no retry helps
            raise DeliveryFailed(f"message not built: {type(exc).__name__}", permanent=True) from None

    def _send(self, message) -> None:
        reused = self._smtp is not None and time.monotonic() - self._used_at < self.idle_seconds
        if not reused:
            self.close()
        self._data_started = False
        try:
            self._attempt(message, reuse=reused)
        except OSError as exc:  # smtplib's errors are OSErrors too: only a dropped session is retried
            dropped = isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(exc, smtplib.SMTPException)
            if not (reused and dropped and not self._data_started):
                raise
            # The kept session had been dropped (server restart, idle timeout) before DATA
            # began, so the server cannot have the message: once more on a new one.
            self._attempt(message, reuse=False)
        self._used_at = time.monotonic()

    def _attempt(self, message, *, reuse: bool) -> None:
        try:
            self._transmit(self._smtp if reuse else self._connect(), message)
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused):
            self._reset()  # refused: the session itself is still good
            raise
        except (smtplib.SMTPException, OSError):
            self.close()
            raise

    def _transmit(self, smtp: smtplib.SMTP, message) -> None:
        """``SMTP.send_message``, noting (``_data_started``) when DATA begins.

        Until then an SMTP transaction the client abandons delivers nothing, so a kept
        session found dropped before it can be retried on a new one; after it the server
        may have the message, and only the notification's own retry may send it again.
        """
        recipient = str(message["To"])
        options = []
        smtp.ehlo_or_helo_if_needed()
        if not (self.envelope_from + recipient).isascii():
            if not smtp.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError("the server does not take international addresses")
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        with io.BytesIO() as buffer:
            BytesGenerator(buffer, policy=message.policy.clone(linesep="\r\n")).flatten(message, linesep="\r\n")
            data = buffer.getvalue()
        code, reply = smtp.mail(self.envelope_from, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, self.envelope_from)
        code, reply = smtp.rcpt(recipient)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
        self._data_started = True
        code, reply = smtp.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

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

    def close(self) -> None:
        self.http.clear()


class LogSmsTransport:
    """Development SMS: the message goes to the log."""

    def send(self, notification: dict) -> None:
        # Ids only: the number and the text are personal data.
        logger.info("sms not sent (no SMS_WEBHOOK_URL)", extra={"notification_id": str(notification["id"]),
                                                               "characters": len(notification["body_text"])})

    def close(self) -> None:
        pass


def from_settings(settings) -> dict[str, Transport]:
    email = SmtpTransport(
        host=settings.smtp_host, port=settings.smtp_port, sender=settings.mail_from,
        starttls=settings.smtp_starttls, username=settings.smtp_username,
        password=str(settings.smtp_password) if settings.smtp_password else None,
    )
    sms = (WebhookSmsTransport(url=settings.sms_webhook_url, token=settings.sms_webhook_token)
           if settings.sms_webhook_url else LogSmsTransport())
    return {"email": email, "sms": sms}
