"""Text that is not text: lone surrogates, control characters, line breaks in one-line fields,
and patterns that only matched a prefix. Never a 500; a 422 naming the field.

The schema tests need no I/O; the API tests run through the gateway and straight to the
users service's port, which must answer the same.
"""
from __future__ import annotations

import json
import uuid

import pytest
from urllib.parse import urlencode

from tests.support import Api, new_email, register

PROBLEM = "application/problem+json"
LONE_SURROGATE = "\ud800"
CONTROLS = ["\x00", "\x01", "\x1b", "\x0b", "\x0c", "\x7f", "\x85", "\x9b"]  # VT, FF, NEL break lines too
PRINTABLE = "Zoë Ågren-Łukasz 李小龍 🎉 «ok» ½"


# -- the fields (no I/O) -----------------------------------------------------------
def _errors(schema, data) -> dict:
    from marshmallow import ValidationError

    try:
        schema().load(data)
    except ValidationError as exc:
        return exc.messages
    return {}


@pytest.mark.parametrize("bad", [LONE_SURROGATE, "\udfff", "ok\udc80ok", *CONTROLS])
def test_text_refuses_invalid_unicode_and_control_characters(bad):
    from marshmallow import Schema

    from infra.validation import Line, Text

    class Both(Schema):
        text = Text()
        line = Line()

    errors = _errors(Both, {"text": f"a{bad}b", "line": f"a{bad}b"})
    assert set(errors) == {"text", "line"}


@pytest.mark.parametrize("brk", ["\n", "\r", "\r\n", "\u2028", "\u2029", "\t"])
def test_a_line_refuses_line_breaks_and_tabs_but_text_keeps_them(brk):
    from marshmallow import Schema

    from infra.validation import Line, Text

    class Both(Schema):
        text = Text()
        line = Line()

    errors = _errors(Both, {"text": f"a{brk}b", "line": f"a{brk}b"})
    assert set(errors) == {"line"}


def test_printable_unicode_is_welcome_everywhere():
    from marshmallow import Schema

    from infra.validation import Line, Text

    class Both(Schema):
        text = Text()
        line = Line()

    assert Both().load({"text": PRINTABLE + "\n\tmore", "line": PRINTABLE}) == {
        "text": PRINTABLE + "\n\tmore", "line": PRINTABLE}


def test_a_pattern_must_match_the_whole_value():
    from marshmallow import ValidationError

    from infra.validation import Pattern

    three = Pattern(r"[A-Z]{3}", error="three capitals")
    assert three("USD") == "USD"
    for bad in ("USD\n", "USDX", "xUSD", "US"):
        with pytest.raises(ValidationError):
            three(bad)


@pytest.mark.parametrize("schema,data,field", [
    ("users.RegisterSchema", {"email": "a@b.io", "name": "Ada", "password": "x" * 8 + LONE_SURROGATE}, "password"),
    ("users.RegisterSchema", {"email": "a@b.io", "name": "Ada\r\nReply-To: evil@x", "password": "long enough"}, "name"),
    ("users.RegisterSchema", {"email": "a@b.io\n", "name": "Ada", "password": "long enough"}, "email"),
    ("users.RegisterSchema", {"email": "a@b.io", "name": "Ada", "password": "long\nenough"}, "password"),
    ("users.RegisterSchema", {"email": "a@b.io", "name": "Ada", "password": "long enough",
                              "phone": "+14155550123\n"}, "phone"),
    ("users.LoginSchema", {"email": "a@b.io", "password": LONE_SURROGATE}, "password"),
    ("users.LoginSchema", {"email": "a@b.io\r\n", "password": "long enough"}, "email"),
    ("users.ProfilePatchSchema", {"phone": "+14155550123\n"}, "phone"),
    ("users.ProfilePatchSchema", {"name": "\u2028"}, "name"),
    ("inventory.ProductCreateSchema", {"sku": "A-1", "name": "W", "price_cents": 1, "currency": "USD\n"},
     "currency"),
    ("inventory.ProductCreateSchema", {"sku": "A\t1", "name": "W", "price_cents": 1}, "sku"),
    ("inventory.ProductPatchSchema", {"name": "W\nX"}, "name"),
    ("inventory.StockAdjustSchema", {"delta": 1, "reason": "restock\r\nBcc: x"}, "reason"),
    ("inventory.ProductQuerySchema", {"cursor": "abc\n"}, "cursor"),
    ("orders.ListQuerySchema", {"cursor": LONE_SURROGATE}, "cursor"),
    ("notifications.ListQuerySchema", {"cursor": "\x00"}, "cursor"),
])
def test_every_domain_schema_refuses_hostile_text_naming_the_field(schema, data, field):
    import importlib

    module, _, name = schema.partition(".")
    errors = _errors(getattr(importlib.import_module(f"services.{module}.schemas"), name), data)
    assert field in errors, errors


def test_a_password_keeps_allowing_any_printable_unicode():
    from services.users.schemas import LoginSchema, RegisterSchema

    password = "pässwörd " + PRINTABLE
    assert RegisterSchema().load({"email": "a@b.io", "name": "Ada", "password": password})["password"] == password
    assert LoginSchema().load({"email": "a@b.io", "password": password})["password"] == password


def test_a_description_keeps_its_lines_and_tabs():
    from services.inventory.schemas import ProductCreateSchema

    loaded = ProductCreateSchema().load({"sku": "A-1", "name": "W", "price_cents": 1,
                                         "description": "line one\r\nline two\n\tindented"})
    assert loaded["description"] == "line one\r\nline two\n\tindented"


# -- through the processes ---------------------------------------------------------
@pytest.fixture(params=["gateway", "users"])
def api(request):
    return Api(request.getfixturevalue("live_gateway" if request.param == "gateway" else "live_users").url)


def _json(value) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: a lone surrogate travels as the escape \ud800


def assert_problem(response, expected: int, *fields: str) -> dict:
    status, headers, body = response
    assert status == expected, (status, body)
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == expected
    for field in fields:
        assert field in body.get("errors", {}), body
    text = json.dumps(body).lower()
    for leak in ("traceback", "unicodeencodeerror", "surrogate", "asyncpg", ".py"):
        assert leak not in text
    return body


def _post(api, path, body, token=None):
    return api.call("POST", path, body=_json(body), token=token, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("field,value", [
    ("password", "long enough" + LONE_SURROGATE),
    ("name", LONE_SURROGATE),
    ("email", f"a{LONE_SURROGATE}@example.com"),
    ("name", "Eve\r\nReply-To: evil@x"),
    ("name", "Eve\x1b[31m"),
    ("phone", "+14155550123\n"),
])
def test_registering_with_hostile_text_is_a_422_naming_the_field(api, field, value):
    body = {"email": new_email(), "name": "Eve", "password": "long enough", field: value}
    assert_problem(_post(api, "/api/users", body), 422, field)


@pytest.mark.parametrize("field,value", [
    ("password", LONE_SURROGATE * 8),
    ("email", f"a{LONE_SURROGATE}@example.com"),
    ("email", "a@example.com\r\n"),
])
def test_logging_in_with_hostile_text_is_a_422_naming_the_field(api, field, value):
    body = {"email": new_email(), "password": "long enough", field: value}
    assert_problem(_post(api, "/api/auth/login", body), 422, field)


@pytest.mark.parametrize("field,value", [
    ("name", LONE_SURROGATE),
    ("name", "Eve\r\nReply-To: evil@x"),
    ("name", "Eve\u2028Mallory"),
    ("phone", "+14155550123\n"),
    ("phone", LONE_SURROGATE),
])
def test_patching_the_profile_with_hostile_text_is_a_422_that_changes_nothing(api, field, value):
    user = register(api)
    response = api.call("PATCH", "/api/users/me", body=_json({field: value}), token=user["access_token"],
                        headers={"Content-Type": "application/json"})
    assert_problem(response, 422, field)
    profile = api.ok("GET", "/api/users/me", token=user["access_token"])
    assert profile["name"] == "Test" and profile["phone"] is None


def test_a_printable_unicode_name_and_password_work_end_to_end(api):
    address = new_email()
    password = "pässwörd 🎉 " + "李小龍"
    created = _post(api, "/api/users", {"email": address, "name": PRINTABLE, "password": password})
    assert created[0] == 201 and created[2]["name"] == PRINTABLE
    assert _post(api, "/api/auth/login", {"email": address, "password": password})[0] == 200


@pytest.mark.parametrize("field,value", [
    ("sku", "SKU\t1"), ("sku", "SKU\n"), ("name", "W" + LONE_SURROGATE), ("name", "W\u2029"),
    ("currency", "USD\n"), ("currency", "usd"), ("description", "a\x00b"), ("description", LONE_SURROGATE),
])
def test_a_product_with_hostile_text_is_a_422_naming_the_field(gateway, admin, field, value):
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Widget", "price_cents": 100, field: value}
    assert_problem(_post(gateway, "/api/inventory/products", body, token=admin), 422, field)


def test_a_product_description_may_have_several_lines_and_tabs(gateway, admin):
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Widget", "price_cents": 100,
            "description": "First line\r\nsecond line\n\tindented"}
    status, _, product = _post(gateway, "/api/inventory/products", body, token=admin)
    assert status == 201 and product["description"] == body["description"]


def test_a_stock_reason_with_a_line_break_is_a_422(gateway, admin):
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Widget", "price_cents": 100}
    product = gateway.ok("POST", "/api/inventory/products", 201, json_body=body, token=admin)
    response = _post(gateway, f"/api/inventory/products/{product['id']}/stock",
                     {"delta": 1, "reason": "restock\nmore"}, token=admin)
    assert_problem(response, 422, "reason")


@pytest.mark.parametrize("path", ["/api/inventory/products", "/api/orders", "/api/notifications"])
def test_a_cursor_with_a_line_break_is_a_422_naming_cursor(gateway, path):
    token = register(gateway)["access_token"]
    query = urlencode({"cursor": "abc\ndef"})
    assert_problem(gateway.call("GET", f"{path}?{query}", token=token), 422, "cursor")
