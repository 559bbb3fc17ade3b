"""The OpenAPI documents: each service's own and the gateway's merged one are valid OpenAPI 3,
resolve every reference, declare errors as problem+json, and state the constraints the
server enforces.

The merged document is built here from the services' documents (their test clients);
tests/e2e/test_openapi_served.py checks the one the live gateway serves.
"""
from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from app import create_app
from app.gateway.views import merge

SERVICES = ("users", "orders", "inventory", "notifications")
METHODS = ("get", "put", "post", "patch", "delete")
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def apps(settings):
    return {service: create_app(service, settings) for service in (*SERVICES, "gateway")}


@pytest.fixture(scope="module")
def documents(apps):
    out = {}
    for service in SERVICES:
        response = apps[service].test_client().get("/openapi.json")
        assert response.status_code == 200
        out[service] = response.get_json()
    return out


@pytest.fixture(scope="module")
def merged(apps, documents):
    from app.gateway.views import own_document

    with apps["gateway"].app_context():
        return merge({"gateway": own_document(), **documents})


def resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def deref(document: dict, node: dict) -> dict:
    while "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


def matches(pattern: str, text: str) -> bool:
    """A JSON Schema (ECMA 262) pattern: its ``$`` is the end of the text, not a newline before it."""
    return re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, text) is not None


def operations(document: dict):
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def assert_valid(document: dict) -> None:
    validate(document)
    for ref in refs(document):
        resolve(document, ref)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_document_is_valid_openapi_and_resolves_every_ref(documents, service):
    assert_valid(documents[service])


def test_the_merged_document_is_valid_openapi_and_resolves_every_ref(merged):
    assert_valid(merged)
    assert {path for path in merged["paths"]} >= {"/api/users", "/api/orders", "/api/services",
                                                 "/api/inventory/products/{product_id}/stock",
                                                 "/api/orders/search", "/api/inventory/products/{product_id}/movements",
                                                 "/api/dead-letters", "/api/dead-letters/redrive",
                                                 "/api/dead-letters/{dead_letter_id}/redrive"}


def test_merging_keeps_shared_components_once_and_namespaces_the_rest(merged):
    schemas = merged["components"]["schemas"]
    assert "Problem" in schemas and not any(name.endswith("Problem") and name != "Problem" for name in schemas)
    assert "OrdersOrder" in schemas and "InventoryProduct" in schemas
    # Same name, different schemas: each service keeps its own.
    assert "OrdersItem" in schemas or "OrdersLine" in schemas


def _all_documents(documents, merged):
    return [*documents.values(), merged]


def test_every_error_response_is_problem_json_with_the_problem_schema(documents, merged):
    for document in _all_documents(documents, merged):
        for method, path, operation in operations(document):
            for status, response in operation["responses"].items():
                if status.startswith(("2", "3")):
                    continue
                response = deref(document, response)
                content = response.get("content", {})
                assert list(content) == [PROBLEM], (method, path, status, list(content))
                schema = deref(document, content[PROBLEM]["schema"])
                assert set(schema["required"]) == {"type", "title", "status", "detail"}, (method, path, status)
                assert schema["properties"]["errors"]["additionalProperties"]["type"] == "array"


def _statuses(operation) -> set[str]:
    return set(operation["responses"])


def test_every_operation_declares_the_errors_it_can_give(merged):
    public = {("POST", "/api/users"), ("POST", "/api/auth/login"), ("POST", "/api/auth/refresh"),
              ("GET", "/api/inventory/products"), ("GET", "/api/inventory/products/{product_id}")}
    admin = {("POST", "/api/inventory/products"), ("PATCH", "/api/inventory/products/{product_id}"),
             ("POST", "/api/inventory/products/{product_id}/stock"), ("GET", "/api/services"),
             ("GET", "/api/orders/search"), ("GET", "/api/inventory/products/{product_id}/movements"),
             ("GET", "/api/dead-letters"), ("POST", "/api/dead-letters/redrive"),
             ("POST", "/api/dead-letters/{dead_letter_id}/redrive")}
    for method, path, operation in operations(merged):
        statuses = _statuses(operation)
        where = (method, path)
        # Anything: a path not in its one spelling, a dependency or upstream down, the rate limit.
        assert {"400", "429", "503", "default"} <= statuses, where
        if method in ("POST", "PATCH", "PUT"):
            assert {"413", "415"} <= statuses, where
        if "requestBody" in operation or any(p["in"] == "query" for p in operation.get("parameters", [])):
            assert "422" in statuses, where
        if "{" in path:
            assert "404" in statuses, where
        if where in public and where != ("POST", "/api/auth/refresh"):
            assert "security" not in operation, where
        else:
            assert operation["security"] == [{"bearerAuth": []}], where
            assert "401" in statuses, where
        if where in admin:
            assert "403" in statuses, where
        else:
            assert "403" not in statuses, where
    for where, status in [(("POST", "/api/users"), "409"), (("POST", "/api/inventory/products"), "409"),
                          (("POST", "/api/orders/{order_id}/cancel"), "409"),
                          (("POST", "/api/inventory/products/{product_id}/stock"), "409"),
                          (("POST", "/api/dead-letters/{dead_letter_id}/redrive"), "409"),
                          (("POST", "/api/auth/login"), "401"), (("POST", "/api/auth/login"), "429")]:
        operation = merged["paths"][where[1]][where[0].lower()]
        assert status in operation["responses"], (where, status)


def _header(document, response, name):
    response = deref(document, response)
    return {k.lower(): v for k, v in response.get("headers", {}).items()}.get(name.lower())


def test_error_responses_declare_their_headers(merged):
    for method, path, operation in operations(merged):
        responses = operation["responses"]
        if "401" in responses:
            assert _header(merged, responses["401"], "WWW-Authenticate")["required"] is True
        assert _header(merged, responses["429"], "Retry-After")["required"] is True
        assert _header(merged, responses["429"], "RateLimit-Limit") is not None
        assert _header(merged, responses["503"], "Retry-After") is not None
    created = merged["paths"]["/api/orders"]["post"]["responses"]["202"]
    assert _header(merged, created, "Location")["required"] is True


def _schema(document, name):
    return document["components"]["schemas"][name]


def _request_schema(document, method, path):
    content = document["paths"][path][method]["requestBody"]["content"]
    assert list(content) == ["application/json"]
    return deref(document, content["application/json"]["schema"])


def test_constraints_the_server_enforces_are_stated(merged):
    stock = _request_schema(merged, "post", "/api/inventory/products/{product_id}/stock")
    assert stock["properties"]["delta"]["not"] == {"enum": [0]}
    assert stock["properties"]["delta"]["minimum"] == -1_000_000_000
    product = _request_schema(merged, "post", "/api/inventory/products")
    assert product["properties"]["currency"]["pattern"] == "^(?:[A-Z]{3})$"
    assert product["properties"]["price_cents"]["minimum"] == 0
    assert product["properties"]["sku"]["maxLength"] == 64
    register = _request_schema(merged, "post", "/api/users")
    assert register["properties"]["password"]["minLength"] == 8
    assert register["properties"]["email"]["format"] == "email"
    assert register["properties"]["email"]["maxLength"] == 254
    assert matches(register["properties"]["phone"]["pattern"], "+14155550123")
    assert not matches(register["properties"]["phone"]["pattern"], "+14155550123\n")
    assert not matches(register["properties"]["phone"]["pattern"], "x+14155550123")
    order = _request_schema(merged, "post", "/api/orders")
    assert (order["properties"]["items"]["minItems"], order["properties"]["items"]["maxItems"]) == (1, 50)
    line = deref(merged, order["properties"]["items"]["items"])
    assert (line["properties"]["quantity"]["minimum"], line["properties"]["quantity"]["maximum"]) == (1, 1000)
    assert line["properties"]["product_id"]["format"] == "uuid"
    assert set(line["required"]) == {"product_id", "quantity"}
    header = [p for p in merged["paths"]["/api/orders"]["post"]["parameters"] if p["in"] == "header"]
    assert header and header[0]["name"] == "Idempotency-Key"
    assert (header[0]["schema"]["minLength"], header[0]["schema"]["maxLength"]) == (1, 255)
    listing = {p["name"]: p for p in merged["paths"]["/api/orders"]["get"]["parameters"]}
    assert (listing["limit"]["schema"]["minimum"], listing["limit"]["schema"]["maximum"]) == (1, 100)
    for path, item in merged["paths"].items():
        for parameter in item.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["schema"]["format"] == "uuid", path


@pytest.mark.parametrize("field, text, ok", [
    ("name", "Ada Lovelace", True), ("name", "Ada\tLovelace", False), ("name", "Ada\nLovelace", False),
    ("name", "Ada\u2028Lovelace", False), ("name", "Ada\x7fLovelace", False), ("name", "Ada\x85", False),
    ("description", "two\nlines\tand a tab", True), ("description", "bell\x07", False),
])
def test_text_constraints_are_patterns_that_agree_with_the_server(merged, field, text, ok):
    from services.inventory.schemas import ProductCreateSchema

    pattern = _request_schema(merged, "post", "/api/inventory/products")["properties"][field]["pattern"]
    assert matches(pattern, text) is ok
    body = {"sku": "S-1", "name": "n", "price_cents": 1, field: text}
    assert (not ProductCreateSchema().validate(body)) is ok


def test_a_patch_body_is_optional_as_the_server_takes_none(merged):
    for path, item in merged["paths"].items():
        if "patch" in item:
            assert item["patch"]["requestBody"]["required"] is False, path
    assert merged["paths"]["/api/orders"]["post"]["requestBody"]["required"] is True


@pytest.mark.parametrize("active, ok", [(True, True), (False, True), (0, False), (1, False), ("true", False),
                                        ("yes", False), (None, False)])
def test_active_is_a_json_boolean_and_nothing_else(merged, active, ok):
    from services.inventory.schemas import ProductPatchSchema

    assert _request_schema(merged, "patch", "/api/inventory/products/{product_id}")["properties"]["active"] == {
        "type": "boolean"}
    assert (not ProductPatchSchema().validate({"active": active})) is ok


@pytest.mark.parametrize("cursor, ok", [("", True), ("MjAyNi0xMS0yOVQxNjo0OTowMCswMDowMHw", True),
                                        ("abc+/", False), ("a" * 201, False), ("a\n", False)])
def test_cursors_are_stated_as_the_server_takes_them(merged, cursor, ok):
    from infra.validation import PageQuerySchema

    schema = {p["name"]: p for p in merged["paths"]["/api/orders"]["get"]["parameters"]}["cursor"]["schema"]
    assert schema["maxLength"] == 200
    assert (matches(schema["pattern"], cursor) and len(cursor) <= 200) is ok
    assert (not PageQuerySchema().validate({"cursor": cursor})) is ok
