"""What a request costs at each hop, as behaviour: a bearer token is verified once per
request in each process, a trace the sampler dropped still travels downstream, and a
revoked token is refused at once by the gateway itself (never forwarded) and by a
service reached directly.

The gateway runs in this process (its upstreams a recording server, or the session's
users service); the users service both in this process and as the session's live one.
"""
from __future__ import annotations

import json
import threading
from dataclasses import replace

import jwt as pyjwt
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.conftest import free_port
from tests.support import Api, register

PROBLEM = "application/problem+json"


class Upstream:
    """An HTTP server standing in for every service: records what reaches it, answers 200."""

    def __init__(self):
        self.requests: list[dict] = []

        @Request.application
        def app(request):
            self.requests.append({"path": request.path, "headers": dict(request.headers)})
            return Response(json.dumps({"ok": True}), content_type="application/json")

        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.stop()


def _gateway(settings, **urls):
    from app import create_app
    from config import tracing

    tracing.configure("tests")  # as every process's boot does (idempotent)
    return create_app("gateway", replace(settings, registry_enabled=False,
                                         service_urls={**settings.service_urls, **urls}))


@pytest.fixture
def gateway_to(rt, settings, upstream):
    """A gateway whose every upstream is the recording server."""
    return _gateway(settings, **{name: upstream.url for name in settings.service_urls}).test_client()


@pytest.fixture
def decodes(monkeypatch):
    """The options of every jwt.decode this process makes (flask-jwt-extended calls it as ``jwt.decode``)."""
    calls: list[dict] = []
    real = pyjwt.decode

    def counting(*args, **kwargs):
        calls.append(dict(kwargs.get("options") or {}))
        return real(*args, **kwargs)

    monkeypatch.setattr(pyjwt, "decode", counting)
    return calls


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- one verification per request and process ----------------------------------------------
def test_the_gateway_verifies_a_token_once_for_its_rate_limit_key_and_its_check(rt, settings, live_users, decodes):
    token = register(Api(live_users.url))["access_token"]
    gateway = _gateway(settings, users=live_users.url).test_client()
    decodes.clear()
    response = gateway.get("/api/users/me", headers=bearer(token))
    assert response.status_code == 200, response.json
    assert response.headers["RateLimit-Remaining"]  # the limiter keyed it (per user) from that one decode
    assert len(decodes) == 1 and decodes[0].get("verify_signature", True), decodes


def test_a_service_verifies_a_token_once(client, live_users, decodes):
    token = register(Api(live_users.url))["access_token"]
    decodes.clear()
    response = client.get("/api/users/me", headers=bearer(token))
    assert response.status_code == 200, response.json
    assert len(decodes) == 1 and decodes[0].get("verify_signature", True), decodes


def test_a_bad_token_is_tried_once_and_refused(gateway_to, upstream, live_users, decodes):
    token = register(Api(live_users.url))["access_token"]
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    decodes.clear()
    response = gateway_to.get("/api/users/me", headers=bearer(forged))
    assert response.status_code == 401 and response.content_type.startswith(PROBLEM)
    assert response.json["detail"] == "the token is invalid"
    assert len(decodes) == 1, decodes  # the limiter's key met the error first; the check got the same one
    assert upstream.requests == []


def test_an_expired_token_is_refused_as_expired(gateway_to, upstream, live_users, settings):
    token = register(Api(live_users.url))["access_token"]
    claims = pyjwt.decode(token, options={"verify_signature": False})
    expired = pyjwt.encode({**claims, "iat": 1, "nbf": 1, "exp": 2}, str(settings.jwt_secret_key), algorithm="HS256")
    response = gateway_to.get("/api/users/me", headers=bearer(expired))
    assert response.status_code == 401 and response.json["detail"] == "the token has expired"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert upstream.requests == []


# -- revocation is never cached ---------------------------------------------------------------
@pytest.mark.parametrize("end", ["logout", "logout-all"])
def test_a_revoked_token_is_refused_at_once_by_the_gateway_and_by_the_service(gateway_to, upstream, live_users, end):
    users = Api(live_users.url)
    token = register(users)["access_token"]
    assert gateway_to.get("/api/users/me", headers=bearer(token)).status_code == 200  # forwarded
    assert len(upstream.requests) == 1
    assert users.call("POST", f"/api/auth/{end}", token=token)[0] == 204
    response = gateway_to.get("/api/users/me", headers=bearer(token))
    assert response.status_code == 401 and response.json["detail"] == "the token has been revoked"
    assert len(upstream.requests) == 1  # the gateway refused it itself: nothing forwarded
    status, headers, body = users.call("GET", "/api/users/me", token=token)
    assert status == 401 and body["detail"] == "the token has been revoked"


# -- trace context, sampled or not -----------------------------------------------------------
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize("flags", ["00", "01"])
def test_the_trace_context_goes_downstream_whether_or_not_it_is_sampled(gateway_to, upstream, flags):
    response = gateway_to.get("/api/inventory/products?limit=1",
                              headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-{flags}"})
    assert response.status_code == 200
    [forwarded] = upstream.requests
    version, trace_id, parent, sampled = forwarded["headers"]["Traceparent"].split("-")
    assert (version, trace_id, sampled) == ("00", TRACE_ID, flags)
    assert parent not in (CALLER_SPAN, "0" * 16)  # a span of the gateway's, in the caller's trace
    assert forwarded["headers"]["X-Request-Id"] == response.headers["X-Request-ID"]


def test_a_request_without_a_trace_starts_one_and_passes_it_on(gateway_to, upstream):
    response = gateway_to.get("/api/inventory/products?limit=1")
    assert response.status_code == 200
    [forwarded] = upstream.requests
    version, trace_id, parent, _ = forwarded["headers"]["Traceparent"].split("-")
    assert version == "00" and int(trace_id, 16) and int(parent, 16)
