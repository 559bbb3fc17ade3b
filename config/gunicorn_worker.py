"""gunicorn's threaded worker, speaking problem+json at the HTTP edges the app never sees.

Three differences from ``gthread``:

- gunicorn answers what it refuses itself (request line too long, too many or too
  large headers, malformed requests, a crash outside the app) with an HTML page.
  ``handle_error`` here lets gunicorn decide and log as before, keeps its status line
  and writes a problem+json body instead.
- gunicorn drops an application's ``Connection`` header and, after a response that
  left a body unread, says ``keep-alive`` yet closes once draining fails. A response
  that refuses a body (the app says ``Connection: close``, as it does for 413, or an
  error answered to a body larger than gunicorn drains) is made to close, saying so.

- A stopping gthread worker stops accepting but keeps its listening socket open until
  it exits, so connections the kernel queued meanwhile were reset after their request
  was sent. Here, once the worker stops accepting for shutdown, it takes what is already
  queued (answering it within the graceful timeout) and closes its listeners at once,
  so later connections are refused, which a client can retry elsewhere.

All three rely on gunicorn internals; tests/e2e/test_protocol_edges.py has guard tests
that fail if the pinned gunicorn changes them.
"""
from __future__ import annotations

import json

from gunicorn import util
from gunicorn.workers import gthread

# gunicorn drains at most this much of an unread body before it gives up on the
# connection (gunicorn.http.parser._DRAIN_MAX_BYTES; a guard test checks it).
DRAINED_BY_GUNICORN = 64 * 1024

_DETAILS = {
    400: "the request is not valid HTTP/1.1",
    403: "the request is forbidden",
    414: "the request line is too long",
    417: "the expectation cannot be met",
    431: "too many request headers, or a header too large",
    500: "an unexpected error occurred; it has been logged",
    501: "the request's transfer coding is not supported",
}


class _Captured:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self):
        self.data = b""

    def gettimeout(self):
        return 0.0

    def setblocking(self, flag):
        pass

    def sendall(self, data):
        self.data += bytes(data)

    def send(self, data):
        self.sendall(data)
        return len(data)

    def status(self) -> int | None:
        line = self.data.split(b"\r\n", 1)[0].split()
        try:
            return int(line[1])
        except (IndexError, ValueError):
            return None


def problem_response(status: int) -> bytes:
    from http import HTTPStatus

    from app.errors import PROBLEM_JSON, problem_document

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = json.dumps(problem_document(status, _DETAILS.get(status, phrase), title=phrase)).encode()
    head = (f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _refuses_body(environ: dict, status: str, headers: list) -> bool:
    if any(name.lower() == "connection" and "close" in value.lower() for name, value in headers):
        return True
    if not status[:1].isdigit() or int(status[:3]) < 400:
        return False
    try:
        declared = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    return declared > DRAINED_BY_GUNICORN or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def close_refused_bodies(app):
    """WSGI middleware: a response that refuses a body ends the connection (``Connection: close``)."""

    def application(environ, start_response):
        def start(status, headers, exc_info=None):
            if _refuses_body(environ, status, headers):
                # gunicorn passes its Response's bound start_response; force_close makes
                # it announce and do the close.
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return application


class ThreadWorker(gthread.ThreadWorker):
    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # gthread's run() after its loop: shutting down
            self._take_queued_then_close()

    def _take_queued_then_close(self):
        for listener in self.sockets:
            listener.setblocking(False)
            while True:
                try:
                    client, addr = listener.accept()
                except OSError:  # EAGAIN: nothing more queued
                    break
                self.nr_conns += 1
                client.setblocking(True)
                self.enqueue_req(gthread.TConn(self.cfg, client, addr, listener.getsockname()))
            listener.close()

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = close_refused_bodies(self.wsgi)

    def handle_error(self, req, client, addr, exc):
        captured = _Captured()
        super().handle_error(req, captured, addr, exc)  # gunicorn's status, logging and access line
        status = captured.status()
        if status is None:
            return  # gunicorn chose to write nothing
        try:
            util.write_nonblock(client, problem_response(status))
        except Exception:  # the client is gone: nothing to answer (gunicorn does the same)
            self.log.debug("Failed to send error message.")
