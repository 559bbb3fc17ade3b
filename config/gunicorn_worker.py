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
  so later connections are refused, which a client can retry elsewhere. Closing the
  last descriptor of a listening socket still resets what the kernel completed between
  the last ``accept`` and the ``close`` (a window a busy machine widens by preempting
  the worker there), so when only this server's stopping workers hold the socket, a
  socket filter first drops new SYNs: no handshake completes after the final drain,
  and a client that tried meanwhile is refused when its SYN is sent again.

- Every listener after the first has a thread pool of its own (``threads`` threads, like
  gthread's one): the gateway's second listener takes the web console's API calls, so a
  console page a gateway thread is waiting on never waits for a thread of that same pool
  (eight concurrent visitors were enough to deadlock one shared pool until the upstream
  timeout). A server with one listener is gthread as it is.

All four rely on gunicorn internals; tests/e2e/test_protocol_edges.py has guard tests
that fail if the pinned gunicorn changes them.
"""
from __future__ import annotations

import ctypes
import json
from concurrent import futures
import os
import socket
import sys
import time

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


# -- the last close of a listening socket -------------------------------------------------
SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>, the same on every Linux architecture
# How long handshakes already answered with a SYN-ACK may take to complete once new SYNs
# are dropped (on loopback microseconds; a round trip across a network).
HANDSHAKE_SETTLE_SECONDS = 0.05


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


# Classic BPF over the TCP header: drop a segment whose flags have SYN without ACK (a new
# connection), keep everything else (the ACK that completes a handshake, data).
_DROP_NEW_SYNS = (
    (0x30, 0, 0, 13),          # ldb [13]          the flags byte
    (0x54, 0, 0, 0x12),        # and #SYN|ACK
    (0x15, 1, 0, 0x02),        # jeq #SYN -> drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1           keep
    (0x06, 0, 0, 0),           # ret #0            drop
)


def refuse_new_handshakes(listener: socket.socket) -> bool:
    """Make a listening TCP socket drop new SYNs (connections in progress complete). False
    where that cannot be done (not TCP, not Linux)."""
    if listener.family not in (socket.AF_INET, socket.AF_INET6) or not sys.platform.startswith("linux"):
        return False
    program = (_SockFilter * len(_DROP_NEW_SYNS))(*(_SockFilter(*op) for op in _DROP_NEW_SYNS))
    fprog = _SockFprog(len(_DROP_NEW_SYNS), program)
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(memoryview(fprog)))  # copied by the kernel
    except OSError:
        return False
    return True


def _socket_holders(inodes: set[int]) -> set[int] | None:
    """Pids of the processes holding a descriptor of these sockets, or None when a process
    cannot be looked at (then nobody can say who else holds them)."""
    links = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue  # gone
        except OSError:
            return None  # another user's process: it might hold one
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def only_stopping_workers_hold(listeners, *, master: int) -> bool:
    """Whether closing these listeners may be their last close: the master no longer holds
    them (gunicorn's Arbiter.stop closes its own before it signals the workers; a reload or a
    worker's restart keeps them) and every other holder is a worker of the same master.
    A new master of a USR2 upgrade, or a socket manager such as systemd, keeps the answer False."""
    inodes = set()
    for listener in listeners:
        try:
            inodes.add(os.fstat(listener.fileno()).st_ino)
        except OSError:
            return False
    holders = _socket_holders(inodes)
    if holders is None or master in holders:
        return False
    return all(pid == os.getpid() or _parent_of(pid) == master for pid in holders)


class ThreadWorker(gthread.ThreadWorker):
    def get_thread_pool(self):
        # Called once in init_process, after fork; gthread keeps what it returns as self.tpool.
        self.listener_pools = {listener.getsockname(): futures.ThreadPoolExecutor(
            max_workers=self.cfg.threads, thread_name_prefix=f"listener-{i}") for i, listener in
            enumerate(self.sockets[1:], start=1)}
        return super().get_thread_pool()

    def enqueue_req(self, conn):
        pool = self.listener_pools.get(conn.server)
        if pool is None:
            return super().enqueue_req(conn)
        # gthread.enqueue_req on this listener's own pool.
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def handle_quit(self, sig, frame):
        for pool in getattr(self, "listener_pools", {}).values():
            pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # gthread's run() after its loop: shutting down
            self._take_queued_then_close()

    def _take_queued_then_close(self):
        if only_stopping_workers_hold(self.sockets, master=self.ppid):
            if any([refuse_new_handshakes(listener) for listener in self.sockets]):
                time.sleep(HANDSHAKE_SETTLE_SECONDS)
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
