"""HTTP at its edges, against real gunicorn processes: one spelling of a path, 405 with
Allow, a refused body closes the connection, and gunicorn's own refusals are problem+json.

Requests go over raw sockets or http.client: urllib3 normalises some paths itself.
"""
from __future__ import annotations

import http.client
import json
import socket
import uuid

import pytest

from tests.conftest import Live
from tests.support import Api, new_email, register

PROBLEM = "application/problem+json"
ONE_MIB = 1024 * 1024


# -- a raw HTTP/1.1 client ----------------------------------------------------------
class Raw:
    """One TCP connection; requests written byte for byte, responses read by Content-Length."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a full response: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed_by_peer(self) -> bool:
        """True when the server closed its side (EOF or reset), after anything left was read."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def request_bytes(method: str, target: str, *, headers: dict | None = None, body: bytes = b"",
                  close: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if "Content-Length" not in (headers or {}) and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw_call(port: int, method: str, target: str, **kwargs) -> tuple[int, dict[str, str], bytes]:
    client = Raw(port)
    try:
        client.send(request_bytes(method, target, **kwargs))
        return client.response()
    finally:
        client.close()


def assert_problem(status: int, headers: dict, body: bytes, expected: int) -> dict:
    assert status == expected, (status, body)
    assert headers["content-type"].startswith(PROBLEM), headers
    document = json.loads(body)
    assert {"type", "title", "status", "detail"} <= set(document)
    assert document["status"] == expected
    text = body.decode().lower()
    assert "<html" not in text and "traceback" not in text and "gunicorn" not in text
    return document


@pytest.fixture(scope="module")
def token(live_gateway):
    return register(Api(live_gateway.url))["access_token"]


# -- 1. one spelling of a path --------------------------------------------------------
TRICKS = [
    "/api/orders/../auth/login",
    "/api/auth/x/../login",
    "/api/auth/./login",
    "/api/auth/login/.",
    "/api/auth/login/..",
    "/api/orders/%2e%2e/auth/login",
    "/api/orders/%2E%2e/auth/login",
    "/api/orders/.%2e/auth/login",
    "/api/auth/%2e/login",
    "/api/auth/lo%2egin",
    "/api/orders%2f..%2fauth%2flogin",
    "/api/auth%2Flogin",
    "/api/orders/..%5cauth%5clogin",
    "/api/auth%5Clogin",
    "/api/orders\\..\\auth\\login",
    "/api//auth/login",
    "/api/auth//login",
    "//api/auth/login",
    "/api/orders/%zz",
    "/api/orders/%e",
    "/api/orders/%",
    "/api/orders/%ff%fe",
    "/api/orders/%c0%ae%c0%ae/auth/login",
    "/api/orders/%00",
    "/api/orders/%0d%0aX-Injected:%20yes",
]


@pytest.mark.parametrize("target", TRICKS)
def test_a_non_canonical_path_is_a_400_at_the_gateway_before_auth_or_limits(live_gateway, token, target):
    body = json.dumps({"email": new_email(), "password": "not the password"}).encode()
    status, headers, raw = raw_call(live_gateway.port, "POST", target, body=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    problem = assert_problem(status, headers, raw, 400)
    assert problem["type"] == "/problems/invalid-path"
    assert "www-authenticate" not in headers  # refused before the token was looked at
    assert "ratelimit-limit" not in headers  # ... and before any limit counted it
    assert "x-request-id" in headers


@pytest.mark.parametrize("target", ["/api/users/../users/me", "/api/users/%2e/me", "/api//users/me",
                                    "/api/users%2fme", "/api/users/me/%zz"])
def test_a_non_canonical_path_is_a_400_on_a_service_port_too(live_users, target):
    status, headers, raw = raw_call(live_users.port, "GET", target)
    assert assert_problem(status, headers, raw, 400)["type"] == "/problems/invalid-path"


def test_a_query_string_may_hold_dots_and_encoded_slashes(live_gateway):
    status, headers, raw = raw_call(live_gateway.port, "GET", "/api/inventory/products?cursor=..%2F..&limit=5")
    assert status == 422 and b"cursor" in raw  # a bad cursor, not a bad path


def test_a_percent_encoded_unreserved_character_is_the_same_path(live_gateway):
    # %61 is "a": the path is /api/inventory/products, routed and forwarded as such.
    status, _, raw = raw_call(live_gateway.port, "GET", "/api/inventory/prod%75cts?limit=1")
    assert status == 200 and "items" in json.loads(raw)


def test_the_login_limit_applies_to_every_spelling_of_the_login_path(stack_env, live_gateway):
    gateway = Live("gateway", stack_env, RATE_LIMIT_LOGIN="2/minute", GATEWAY_SERVICES="users")
    try:
        api = Api(gateway.url)
        token = register(api)["access_token"]
        email = new_email()
        body = json.dumps({"email": email, "password": "wrong password"}).encode()
        headers = {"Content-Type": "application/json"}
        for _ in range(2):
            assert raw_call(gateway.port, "POST", "/api/auth/login", body=body, headers=headers)[0] == 401
        # Another spelling of the same path is the same path: limited.
        status, answer, _ = raw_call(gateway.port, "POST", "/api/%61uth/login", body=body, headers=headers)
        assert status == 429 and int(answer["retry-after"]) >= 1
        # A spelling that would reach login through the generic route (with any valid token) is refused.
        for target in ("/api/auth/x/../login", "/api/users/../auth/login", "/api/auth/login/."):
            status, answer, raw = raw_call(gateway.port, "POST", target, body=body,
                                           headers={**headers, "Authorization": f"Bearer {token}"})
            assert_problem(status, answer, raw, 400)
    finally:
        gateway.stop()


# -- 4a. a method the path does not have: 405 with Allow -------------------------------------
ANY_ID = str(uuid.uuid4())
UNDECLARED = [
    ("users", "DELETE", "/api/users", {"POST"}),
    ("users", "PUT", "/api/users/me", {"GET", "PATCH"}),
    ("users", "GET", "/api/auth/login", {"POST"}),
    ("users", "PATCH", "/api/auth/login", {"POST"}),
    ("users", "DELETE", "/api/auth/refresh", {"POST"}),
    ("orders", "DELETE", "/api/orders", {"GET", "POST"}),
    ("orders", "TRACE", "/api/orders", {"GET", "POST"}),
    ("orders", "PATCH", f"/api/orders/{ANY_ID}", {"GET"}),
    ("orders", "GET", f"/api/orders/{ANY_ID}/cancel", {"POST"}),
    ("inventory", "DELETE", "/api/inventory/products", {"GET", "POST"}),
    ("inventory", "DELETE", f"/api/inventory/products/{ANY_ID}", {"GET", "PATCH"}),
    ("inventory", "GET", f"/api/inventory/products/{ANY_ID}/stock", {"POST"}),
    ("notifications", "POST", "/api/notifications", {"GET"}),
]


def _allow(headers: dict) -> set[str]:
    return {m.strip() for m in headers["allow"].split(",")}


def _with_auto(methods: set[str]) -> set[str]:
    """What Flask adds to a route's methods: OPTIONS always, HEAD with GET."""
    return methods | {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())


@pytest.mark.parametrize("service,method,path,allowed", UNDECLARED)
def test_an_undeclared_method_is_a_405_with_allow_at_the_gateway_without_a_token(
        live_gateway, service, method, path, allowed):
    status, headers, raw = raw_call(live_gateway.port, method, path)
    assert_problem(status, headers, raw, 405)
    assert _allow(headers) == _with_auto(allowed)
    assert "www-authenticate" not in headers


@pytest.mark.parametrize("service,method,path,allowed", UNDECLARED)
def test_an_undeclared_method_is_a_405_with_the_same_allow_on_the_service_port(
        request, live_gateway, service, method, path, allowed):
    server = request.getfixturevalue(f"live_{service}")
    status, headers, raw = raw_call(server.port, method, path)
    assert_problem(status, headers, raw, 405)
    assert _allow(headers) == _with_auto(allowed)


def test_an_undeclared_method_with_a_valid_token_is_a_405_too(live_gateway, token):
    status, headers, raw = raw_call(live_gateway.port, "DELETE", "/api/users/me",
                                    headers={"Authorization": f"Bearer {token}"})
    assert_problem(status, headers, raw, 405)
    assert _allow(headers) == {"GET", "HEAD", "OPTIONS", "PATCH"}


def test_options_answers_allow_at_the_gateway_like_the_services_do(live_gateway, live_orders):
    for server in (live_gateway, live_orders):
        status, headers, _ = raw_call(server.port, "OPTIONS", "/api/orders")
        assert status == 200 and _allow(headers) == {"GET", "HEAD", "OPTIONS", "POST"}


def test_the_gateway_method_table_matches_what_the_services_document(live_gateway):
    """Every operation a service serves under /api is in the gateway's table, with its methods."""
    from app.gateway.routes import resolve, resolve_own

    document = Api(live_gateway.url).ok("GET", "/api/openapi.json")
    checked = 0
    for template, item in document["paths"].items():
        path = "/".join(ANY_ID if part.startswith("{") else part for part in template.split("/"))
        if resolve_own(path):  # the gateway's own
            continue
        documented = {m.upper() for m in item if m in ("get", "post", "put", "patch", "delete")}
        route = resolve(path)
        assert route is not None, path
        assert route.allowed_methods(path) == _with_auto(documented), template
        checked += 1
    assert checked >= 12


# -- 4b. a refused body closes the connection, saying so ------------------------------------
@pytest.mark.parametrize("server", ["live_gateway", "live_users"])
def test_a_body_over_1_mib_is_a_413_that_says_connection_close_and_the_client_carries_on(request, server):
    live = request.getfixturevalue(server)
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    try:
        big = b'{"name": "' + b"x" * ONE_MIB + b'"}'
        conn.request("POST", "/api/users", body=big, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        assert_problem(response.status, {k.lower(): v for k, v in response.getheaders()}, raw, 413)
        assert response.getheader("Connection") == "close"
        # A keep-alive client that was told "close" opens a new connection: the next request works.
        conn.request("GET", "/health")
        follow = conn.getresponse()
        assert follow.status == 200 and json.loads(follow.read())["status"] == "ok"
    finally:
        conn.close()


@pytest.mark.parametrize("server", ["live_gateway", "live_users"])
def test_a_413_closes_the_socket_after_the_answer(request, server):
    live = request.getfixturevalue(server)
    client = Raw(live.port)
    try:
        client.send(request_bytes("POST", "/api/users", close=False,
                                  headers={"Content-Type": "application/json",
                                           "Content-Length": str(2 * ONE_MIB)}))
        status, headers, raw = client.response()
        assert_problem(status, headers, raw, 413)
        assert headers["connection"] == "close"
        assert client.closed_by_peer()
    finally:
        client.close()


def test_an_oversized_body_is_refused_with_413_before_auth_at_the_gateway(live_gateway):
    client = Raw(live_gateway.port)
    try:
        client.send(request_bytes("POST", "/api/orders", close=False,
                                  headers={"Content-Type": "application/json",
                                           "Content-Length": str(ONE_MIB + 1)}))
        status, headers, raw = client.response()
        assert_problem(status, headers, raw, 413)
        assert headers["connection"] == "close"
    finally:
        client.close()


def test_an_unread_body_refused_for_another_reason_closes_too(live_gateway):
    """401 without reading 200 KiB: more than gunicorn drains, so the connection must end, said so."""
    conn = http.client.HTTPConnection("127.0.0.1", live_gateway.port, timeout=10)
    try:
        body = json.dumps({"items": [], "pad": "x" * 200_000}).encode()
        conn.request("POST", "/api/orders", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 401 and response.getheader("Connection") == "close"
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_small_refused_body_keeps_the_connection(live_gateway):
    conn = http.client.HTTPConnection("127.0.0.1", live_gateway.port, timeout=10)
    try:
        conn.request("POST", "/api/orders", body=b'{"items": []}', headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 401 and response.getheader("Connection") == "keep-alive"
        sock = conn.sock
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200 and conn.sock is sock
    finally:
        conn.close()


# -- 4c. gunicorn's own refusals are problem+json -------------------------------------------
GUNICORN_REFUSALS = [
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("too many headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    ("a header too large", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 9000 + b"\r\n\r\n", 431),
    ("invalid header name", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: b\r\n\r\n", 400),
    ("invalid request line", b"GET\r\n\r\n", 400),
    ("invalid method", b"G<T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("invalid HTTP version", b"GET /health HTTP/9.1\r\nHost: x\r\n\r\n", 400),
    ("invalid chunk size", b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("unsupported transfer coding", b"POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("truncated chunked body", b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", 400),
]


@pytest.mark.parametrize("server", ["live_gateway", "live_users"])
@pytest.mark.parametrize("what,data,expected", GUNICORN_REFUSALS, ids=[r[0] for r in GUNICORN_REFUSALS])
def test_gunicorn_refusals_are_problem_json(request, server, what, data, expected):
    client = Raw(request.getfixturevalue(server).port)
    try:
        client.send(data)
        status, headers, raw = client.response()
    finally:
        client.close()
    assert_problem(status, headers, raw, expected)
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(raw)


# -- guards on what the worker class relies on in gunicorn ------------------------------------
class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, msg, *args):
        self.lines.append(("warning", msg % args if args else msg))

    def exception(self, msg, *args):
        self.lines.append(("exception", msg % args if args else msg))

    def debug(self, msg, *args):
        pass

    def access(self, *args):
        pass


def _worker():
    from config.gunicorn_worker import ThreadWorker

    worker = ThreadWorker.__new__(ThreadWorker)  # handle_error needs only its log (and cfg with a request)
    worker.log = _Log()
    return worker


@pytest.mark.parametrize("exc,expected", [
    ("LimitRequestLine", 414), ("LimitRequestHeaders", 431), ("InvalidHeaderName", 400),
    ("InvalidRequestLine", 400), ("RuntimeError", 500),
])
def test_guard_the_worker_turns_gunicorn_handle_error_into_problem_json(exc, expected):
    """Fails if gunicorn stops reporting errors through ``Worker.handle_error`` -> ``util.write_error``."""
    from gunicorn.http import errors

    error = {
        "LimitRequestLine": lambda: errors.LimitRequestLine(9000, 4094),
        "LimitRequestHeaders": lambda: errors.LimitRequestHeaders("limit request headers fields"),
        "InvalidHeaderName": lambda: errors.InvalidHeaderName("Bad Header"),
        "InvalidRequestLine": lambda: errors.InvalidRequestLine("GET"),
        "RuntimeError": lambda: RuntimeError("SELECT secret FROM internals"),
    }[exc]()
    server, client = socket.socketpair()
    try:
        _worker().handle_error(None, server, ("127.0.0.1", 1), error)
        server.close()
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    finally:
        client.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].startswith(f"HTTP/1.1 {expected} ")
    assert_problem(expected, headers, body, expected)
    assert b"SELECT" not in body


def test_guard_gunicorn_still_ignores_an_application_connection_header_and_offers_force_close():
    """The worker closes a refused body's connection through the server Response's ``force_close``:
    gunicorn drops the application's own Connection header, and start_response is that Response's."""
    import inspect

    from gunicorn.http.wsgi import Response
    from gunicorn.workers.gthread import ThreadWorker

    assert callable(getattr(Response, "force_close", None))
    assert "resp.start_response" in inspect.getsource(ThreadWorker.handle_request)
    response = Response.__new__(Response)
    response.headers, response.response_length, response.upgrade = [], None, False
    response.process_headers([("Connection", "close"), ("X-A", "b")])
    assert response.headers == [("X-A", "b")] and not getattr(response, "must_close", False)


def test_guard_gunicorn_drains_no_more_than_the_worker_assumes():
    from gunicorn.http import parser

    from config.gunicorn_worker import DRAINED_BY_GUNICORN

    assert parser._DRAIN_MAX_BYTES >= DRAINED_BY_GUNICORN


def test_the_gateway_still_checks_its_upstreams_when_asked_if_ready(live_gateway):
    """The refusal hooks moved the ops hooks ahead of the gateway's: its upstream checks still count."""
    status, _, body = raw_call(live_gateway.port, "GET", "/ready")
    assert status in (200, 503)
    assert {"upstream:users", "upstream:orders"} <= set(json.loads(body)["checks"])


def test_guard_gthread_stops_accepting_after_its_loop_and_keeps_the_names_the_worker_uses():
    """config/gunicorn_worker.ThreadWorker takes the queued connections when gthread's run()
    turns accepting off for shutdown; it needs that call and these names to stay as they are."""
    import inspect

    from gunicorn.workers import gthread

    run = inspect.getsource(gthread.ThreadWorker.run)
    loop_end = run.index("while self.alive:")
    assert "self.set_accept_enabled(False)" in run[loop_end:]
    assert list(inspect.signature(gthread.TConn).parameters) == ["cfg", "sock", "client", "server"]
    assert callable(gthread.ThreadWorker.enqueue_req)
    assert "self.nr_conns" in inspect.getsource(gthread.ThreadWorker.accept)
    # A listener's own pool: ThreadWorker.enqueue_req repeats gthread's on another executor,
    # and makes its pools when gthread asks for its one.
    enqueue = inspect.getsource(gthread.ThreadWorker.enqueue_req)
    assert "self.tpool.submit(self.handle, conn)" in enqueue
    assert "self.method_queue.defer(self.finish_request, conn, fut)" in enqueue
    assert "self.tpool = self.get_thread_pool()" in inspect.getsource(gthread.ThreadWorker.init_process)
    assert "self.server = server" in inspect.getsource(gthread.TConn.__init__)


def test_guard_the_arbiter_closes_its_listeners_before_it_signals_the_workers_to_stop():
    """ThreadWorker reads "the master no longer holds the listeners" as "the server is
    stopping, this close may be the last": gunicorn's Arbiter.stop must keep that order, and a
    reload must keep the master's listeners."""
    import inspect

    from gunicorn.arbiter import Arbiter

    stop = inspect.getsource(Arbiter.stop)
    assert stop.index("sock.close_sockets(self.LISTENERS") < stop.index("self.kill_workers(")
    assert "close_sockets" not in inspect.getsource(Arbiter.reload)


# -- the last close of a listening socket ---------------------------------------------------
def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def test_a_listener_that_refuses_new_handshakes_completes_none_and_keeps_those_queued():
    from config.gunicorn_worker import refuse_new_handshakes

    listener = _listener()
    address = listener.getsockname()
    queued = socket.create_connection(address, timeout=5)
    queued.sendall(b"GET / HTTP/1.1\r\n\r\n")
    try:
        assert refuse_new_handshakes(listener)
        # A new SYN is dropped: the client never sees its connection made, so it never
        # sends a request that the close below would reset.
        with pytest.raises(TimeoutError):
            socket.create_connection(address, timeout=0.5)
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
            accepted.sendall(b"answered")
            assert queued.recv(100) == b"answered"
    finally:
        queued.close()
        listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)


def test_only_workers_of_a_stopping_master_count_as_the_last_holders_of_a_listener():
    import os
    import subprocess
    import sys

    from config.gunicorn_worker import _socket_holders, only_stopping_workers_hold

    listener = _listener()
    try:
        visible = _socket_holders({os.fstat(listener.fileno()).st_ino}) is not None
        # This process as the worker, its parent as a master that has closed its copy.
        assert only_stopping_workers_hold([listener], master=os.getppid()) is visible
        # The master still holds it (a reload, a worker's restart): not the last close.
        assert not only_stopping_workers_hold([listener], master=os.getpid())
        # Another process holds it too, not a worker of that master (a new master of a USR2
        # upgrade, a socket manager): not the last close either.
        other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                 pass_fds=[listener.fileno()])
        try:
            assert not only_stopping_workers_hold([listener], master=os.getppid())
        finally:
            other.stdin.close()
            other.wait(10)
    finally:
        listener.close()
