"""What the live gateway serves at /api/openapi.json is a document a client generator or a
fuzzer can load as it is: valid OpenAPI 3, every reference resolved, errors as
problem+json; its operations and the gateway's routing table agree on what is public.
And each service's own /openapi.json is valid too."""
from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from app.gateway.routes import resolve, resolve_own
from tests.api.test_openapi import METHODS, PROBLEM, deref, operations, refs
from tests.api.test_openapi import resolve as resolve_ref
from tests.support import Api

ANY_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def document(live_gateway):
    return Api(live_gateway.url).ok("GET", "/api/openapi.json")


def test_the_served_document_is_valid_and_resolves_every_ref(document):
    validate(document)
    for ref in refs(document):
        resolve_ref(document, ref)


@pytest.mark.parametrize("server", ["live_users", "live_orders", "live_inventory", "live_notifications"])
def test_each_service_serves_a_valid_document_of_its_own(request, server):
    own = Api(request.getfixturevalue(server).url).ok("GET", "/openapi.json")
    validate(own)
    for ref in refs(own):
        resolve_ref(own, ref)


def test_served_errors_are_problem_json(document):
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith(("2", "3")):
                assert list(deref(document, response)["content"]) == [PROBLEM], (method, path, status)


def test_what_the_document_calls_public_is_what_the_gateway_lets_through_without_a_token(document):
    checked = 0
    for template, item in document["paths"].items():
        path = "/".join(ANY_ID if part.startswith("{") else part for part in template.split("/"))
        route = resolve(path) or resolve_own(path)  # routed, or the gateway's own (/api/services, ...)
        for method in METHODS:
            if method in item:
                needs_token = "security" in item[method]
                # /api/auth/refresh takes a refresh token, which the users service checks, not the gateway.
                if path != "/api/auth/refresh":
                    assert route.is_public(method.upper(), path) is not needs_token, (method, template)
                checked += 1
    assert checked >= 16


def test_a_documented_error_is_what_the_server_sends(live_gateway, document):
    """Spot checks: the statuses the document lists come back as problem+json with its headers."""
    api = Api(live_gateway.url)
    status, headers, body = api.call("GET", "/api/orders")
    assert status == 401 and "401" in document["paths"]["/api/orders"]["get"]["responses"]
    assert headers["Content-Type"] == PROBLEM and headers["WWW-Authenticate"] == "Bearer"
    assert {"type", "title", "status", "detail"} <= set(body)
    status, headers, body = api.call("POST", "/api/users", body=b"{", headers={"Content-Type": "application/json"})
    assert status == 400 and headers["Content-Type"] == PROBLEM
    status, headers, body = api.call("POST", "/api/users", body=b"x=1",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and headers["Content-Type"] == PROBLEM
    status, _, body = api.call("GET", f"/api/inventory/products/{ANY_ID}")
    assert status == 404 and body["status"] == 404
