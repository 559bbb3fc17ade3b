"""The Inventory and Orders rows of /work/shared/api.md, black box through the gateway.

Every test is named as the sentence of the contract it checks. Orders stay
``pending`` unless a Celery worker runs; only the tests at the end of the module
ask for ``live_worker`` (a session fixture: once started, orders progress). The
cancel tests place their orders through an orders service of their own whose broker
no worker reads (``idle_orders``), so those orders are pending whatever runs.
"""
from __future__ import annotations

import base64
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from tests.conftest import Live, free_port
from tests.support import Api, create_product, place, register, wait_for, wait_terminal

PRODUCT_FIELDS = {"id", "sku", "name", "description", "price_cents", "currency", "active", "on_hand",
                  "reserved", "available", "updated_at"}
ORDER_FIELDS = {"id", "user_id", "status", "reason", "items", "total_cents", "currency", "created_at",
                "updated_at", "history"}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")
# What a problem body must never carry: tracebacks, SQL, driver or module names.
LEAKS = ("Traceback", 'File "', "asyncpg", "psycopg", "pgdbm", "SELECT ", "INSERT ", "UPDATE ", "{{",
         "tables.", "services.", "app.", "werkzeug", "marshmallow", "webargs", "Exception", "Error(",
         "/work/", ".py")
JSON = {"Content-Type": "application/json"}
MIB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------
def assert_problem(response, status: int, *fields: str) -> dict:
    """An RFC 9457 problem with ``status``, naming ``fields`` in ``errors``, leaking nothing."""
    code, headers, body = response
    assert code == status, (code, body)
    assert headers.get("Content-Type", "").split(";")[0].strip() == "application/problem+json", dict(headers)
    assert isinstance(body, dict), body
    for key in ("type", "title", "status", "detail"):
        assert key in body, body
    assert body["status"] == status and isinstance(body["title"], str) and isinstance(body["detail"], str)
    text = json.dumps(body)
    for leak in LEAKS:
        assert leak not in text, (leak, body)
    if status == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(headers)
    if fields:
        errors = body.get("errors")
        assert isinstance(errors, dict), body
        for field in fields:
            assert field in errors, (field, errors)
            assert errors[field] and all(isinstance(m, str) for m in errors[field]), errors
    return body


def assert_rfc3339_utc(value: str) -> None:
    assert isinstance(value, str) and RFC3339_UTC.match(value), value
    assert parse_time(value).utcoffset().total_seconds() == 0


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_product_shape(product: dict) -> None:
    assert PRODUCT_FIELDS <= set(product), set(product)
    uuid.UUID(product["id"])
    assert isinstance(product["active"], bool)
    for key in ("price_cents", "on_hand", "reserved", "available"):
        assert isinstance(product[key], int) and not isinstance(product[key], bool), (key, product)
    assert product["available"] == product["on_hand"] - product["reserved"] >= 0, product
    assert re.fullmatch(r"[A-Z]{3}", product["currency"]), product
    assert_rfc3339_utc(product["updated_at"])


def assert_order_shape(order: dict) -> None:
    assert ORDER_FIELDS <= set(order), set(order)
    uuid.UUID(order["id"])
    uuid.UUID(order["user_id"])
    assert order["status"] in {"pending", "reserved", "fulfilled", "rejected", "cancelled"}
    assert_rfc3339_utc(order["created_at"])
    assert_rfc3339_utc(order["updated_at"])
    assert order["total_cents"] == sum(i["unit_price_cents"] * i["quantity"] for i in order["items"])
    for entry in order["history"]:
        assert {"status", "reason", "at"} <= set(entry)
        assert_rfc3339_utc(entry["at"])


def walk(api: Api, path: str, *, limit: int, token: str | None = None) -> tuple[list[str], list[dict]]:
    """Every id of a paginated list, in order, and every page body."""
    ids, pages, cursor = [], [], None
    for _ in range(10_000):
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = api.ok("GET", path + query, token=token)
        assert set(page) >= {"items", "next_cursor"}, page
        assert len(page["items"]) <= limit
        pages.append(page)
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert page["items"], "a page with a next cursor must not be empty"
    raise AssertionError("pagination did not end")


def cursor_for(when: str) -> str:
    return base64.urlsafe_b64encode(f"{when}|{uuid.uuid4()}".encode()).decode().rstrip("=")


def new_sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:12]}"


def line(product_id: str, quantity: int = 1) -> dict:
    return {"product_id": product_id, "quantity": quantity}


# -- fixtures -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(gateway):
    return gateway


@pytest.fixture(scope="module")
def shopper(api):
    """A customer shared by tests that never look at the caller's order list."""
    return register(api)["access_token"]


@pytest.fixture
def idle_orders(stack_env, own_broker):
    """The orders API of a private orders service on a broker no worker reads: its orders
    stay ``pending`` until cancelled (the session's reads still see them, same database)."""
    server = Live("orders", {**stack_env, "CELERY_BROKER_URL": own_broker}, WEB_CONCURRENCY="1")
    try:
        yield Api(server.url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def product(api, admin):
    """An active product with plenty of stock that no test changes."""
    return create_product(api, admin, stock=1000, price_cents=1250)


@pytest.fixture(scope="module")
def fifty_products(api, admin):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda n: create_product(api, admin, stock=5000, price_cents=100 + n), range(50)))


# == Inventory: reads ================================================================
def test_the_product_list_is_public_and_is_items_plus_next_cursor(api, product):
    status, _, page = api.call("GET", "/api/inventory/products")
    assert status == 200 and set(page) >= {"items", "next_cursor"}
    assert isinstance(page["items"], list)
    assert page["next_cursor"] is None or isinstance(page["next_cursor"], str)


def test_a_product_is_public_and_has_exactly_the_contract_fields(api, product):
    got = api.ok("GET", f"/api/inventory/products/{product['id']}")
    assert_product_shape(got)
    assert got["id"] == product["id"] and got["sku"] == product["sku"]
    assert (got["price_cents"], got["currency"], got["active"]) == (1250, "USD", True)
    assert (got["on_hand"], got["reserved"], got["available"]) == (1000, 0, 1000)


def test_every_listed_product_has_the_contract_fields_and_available_is_on_hand_minus_reserved(api, product):
    page = api.ok("GET", "/api/inventory/products?limit=100")
    assert page["items"]
    for item in page["items"]:
        assert_product_shape(item)
        assert item["active"] is True


def test_the_list_limit_defaults_to_20(api, fifty_products):
    page = api.ok("GET", "/api/inventory/products")
    assert len(page["items"]) == 20 and page["next_cursor"]


@pytest.mark.parametrize("limit", [1, 100])
def test_the_list_limit_accepts_1_and_100(api, fifty_products, limit):
    page = api.ok("GET", f"/api/inventory/products?limit={limit}")
    assert 1 <= len(page["items"]) <= limit
    assert len(page["items"]) == limit or page["next_cursor"] is None  # a short page is the last one


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5"])
def test_a_list_limit_outside_1_to_100_is_a_422_naming_limit(api, limit):
    assert_problem(api.call("GET", f"/api/inventory/products?limit={limit}"), 422, "limit")


def test_cursor_pagination_returns_every_product_exactly_once_and_ends_with_a_null_cursor(api, admin):
    created = [create_product(api, admin)["id"] for _ in range(4)]
    ids, pages = walk(api, "/api/inventory/products", limit=3)
    assert len(ids) == len(set(ids)), "a product appeared twice"
    assert all(ids.count(p) == 1 for p in created)
    assert pages[-1]["next_cursor"] is None and len(pages) >= 2
    positions = [ids.index(p) for p in created]
    assert positions == sorted(positions), "products are listed oldest first"


@pytest.mark.parametrize("cursor", ["garbage", "!!!", cursor_for("not-a-date"),
                                    base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|nope").decode()])
def test_a_garbage_product_cursor_is_a_422_naming_cursor(api, cursor):
    assert_problem(api.call("GET", f"/api/inventory/products?cursor={cursor}"), 422, "cursor")


def test_a_product_cursor_with_an_out_of_range_timestamp_is_a_422_naming_cursor(api):
    response = api.call("GET", f"/api/inventory/products?cursor={cursor_for('0001-01-01T00:00:00+14:00')}")
    assert_problem(response, 422, "cursor")


def test_getting_an_unknown_product_is_a_404_problem(api):
    assert_problem(api.call("GET", f"/api/inventory/products/{uuid.uuid4()}"), 404)


@pytest.mark.parametrize("bad_id", ["abc", "123", "not-a-uuid-at-all", "00000000-0000-0000-0000-00000000000g"])
def test_getting_a_product_by_a_non_uuid_is_a_404_problem(api, bad_id):
    assert_problem(api.call("GET", f"/api/inventory/products/{bad_id}"), 404)


# == Inventory: create ===============================================================
def test_an_admin_creates_a_product_201_with_location_and_defaults(api, admin):
    sku = new_sku()
    status, headers, body = api.call("POST", "/api/inventory/products", token=admin,
                                     json_body={"sku": sku, "name": "Gadget", "price_cents": 999})
    assert status == 201, body
    assert_product_shape(body)
    assert headers["Location"].endswith(f"/api/inventory/products/{body['id']}")
    assert (body["sku"], body["name"], body["price_cents"]) == (sku, "Gadget", 999)
    assert (body["currency"], body["active"], body["description"]) == ("USD", True, "")
    assert (body["on_hand"], body["reserved"], body["available"]) == (0, 0, 0)
    assert api.ok("GET", f"/api/inventory/products/{body['id']}")["sku"] == sku


def test_an_admin_creates_a_product_with_every_optional_field(api, admin):
    body = {"sku": new_sku(), "name": "Gadget", "description": "A fine gadget", "price_cents": 0,
            "currency": "EUR", "stock": 7}
    created = api.ok("POST", "/api/inventory/products", 201, token=admin, json_body=body)
    assert (created["description"], created["price_cents"], created["currency"]) == ("A fine gadget", 0, "EUR")
    assert (created["on_hand"], created["reserved"], created["available"]) == (7, 0, 7)


def test_a_customer_creating_a_product_is_a_403_problem(api, shopper):
    response = api.call("POST", "/api/inventory/products", token=shopper,
                        json_body={"sku": new_sku(), "name": "X", "price_cents": 1})
    assert_problem(response, 403)


@pytest.mark.parametrize("token", [None, "garbage", "a.b.c"])
def test_creating_a_product_without_a_valid_token_is_a_401_with_www_authenticate_bearer(api, token):
    response = api.call("POST", "/api/inventory/products", token=token,
                        json_body={"sku": new_sku(), "name": "X", "price_cents": 1})
    assert_problem(response, 401)


def test_a_duplicate_sku_is_a_409_problem(api, admin, product):
    response = api.call("POST", "/api/inventory/products", token=admin,
                        json_body={"sku": product["sku"], "name": "Again", "price_cents": 1})
    assert_problem(response, 409)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"price_cents": -1}, "price_cents"),
        ({"price_cents": "100"}, "price_cents"),
        ({"price_cents": 1.5}, "price_cents"),
        ({"price_cents": None}, "price_cents"),
        ({"price_cents": True}, "price_cents"),
        ({"price_cents": 10**12 + 1}, "price_cents"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "US"}, "currency"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"sku": ""}, "sku"),
        ({"sku": "S" * 65}, "sku"),
        ({"name": "N" * 201}, "name"),
        ({"stock": 1.5}, "stock"),
        ({"stock": "3"}, "stock"),
        ({"stock": -1}, "stock"),
        ({"colour": "red"}, "colour"),
        ({"description": 5}, "description"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_an_invalid_product_body_is_a_422_naming_the_field(api, admin, changes, field):
    body = {"sku": new_sku(), "name": "Widget", "price_cents": 100, **changes}
    body = {k: v for k, v in body.items() if not (k == "name" and v is None)}  # None name = missing name
    assert_problem(api.call("POST", "/api/inventory/products", token=admin, json_body=body), 422, field)


@pytest.mark.parametrize("missing", ["sku", "name", "price_cents"])
def test_a_product_body_missing_a_required_field_is_a_422_naming_it(api, admin, missing):
    body = {"sku": new_sku(), "name": "Widget", "price_cents": 100}
    del body[missing]
    assert_problem(api.call("POST", "/api/inventory/products", token=admin, json_body=body), 422, missing)


def test_concurrent_creates_of_one_sku_make_one_product_and_409_the_rest(api, admin):
    sku = new_sku()

    def create(_):
        return api.call("POST", "/api/inventory/products", token=admin,
                        json_body={"sku": sku, "name": "Racer", "price_cents": 1})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(create, range(6)))
    assert sorted(r[0] for r in responses) == [201] + [409] * 5
    for response in responses:
        if response[0] == 409:
            assert_problem(response, 409)


def test_a_product_body_with_several_errors_names_each_wrong_field(api, admin):
    body = {"sku": new_sku(), "price_cents": -5, "currency": "usd", "stock": "ten", "extra": 1}
    problem = assert_problem(api.call("POST", "/api/inventory/products", token=admin, json_body=body), 422,
                             "name", "price_cents", "currency", "stock", "extra")
    assert "sku" not in problem["errors"]


# == Inventory: patch ================================================================
def test_an_admin_patches_name_description_price_and_active(api, admin):
    created = create_product(api, admin, stock=3, price_cents=500)
    changed = api.ok("PATCH", f"/api/inventory/products/{created['id']}", token=admin,
                     json_body={"name": "Renamed", "description": "New text", "price_cents": 650, "active": False})
    assert_product_shape(changed)
    assert (changed["name"], changed["description"], changed["price_cents"], changed["active"]) == (
        "Renamed", "New text", 650, False)
    assert (changed["sku"], changed["on_hand"]) == (created["sku"], 3)
    assert parse_time(changed["updated_at"]) >= parse_time(created["updated_at"])
    again = api.ok("GET", f"/api/inventory/products/{created['id']}")
    assert (again["name"], again["price_cents"], again["active"]) == ("Renamed", 650, False)


def test_a_patch_changes_only_the_fields_it_names(api, admin):
    created = create_product(api, admin, price_cents=500, description="keep me")
    changed = api.ok("PATCH", f"/api/inventory/products/{created['id']}", token=admin,
                     json_body={"price_cents": 501})
    assert (changed["name"], changed["description"], changed["price_cents"], changed["active"]) == (
        created["name"], "keep me", 501, True)


def test_a_customer_patching_a_product_is_a_403_problem(api, shopper, product):
    response = api.call("PATCH", f"/api/inventory/products/{product['id']}", token=shopper,
                        json_body={"name": "Mine now"})
    assert_problem(response, 403)
    assert api.ok("GET", f"/api/inventory/products/{product['id']}")["name"] == product["name"]


def test_patching_a_product_without_a_token_is_a_401(api, product):
    assert_problem(api.call("PATCH", f"/api/inventory/products/{product['id']}", json_body={"name": "X"}), 401)


def test_patching_an_unknown_product_is_a_404_problem(api, admin):
    assert_problem(api.call("PATCH", f"/api/inventory/products/{uuid.uuid4()}", token=admin,
                            json_body={"name": "X"}), 404)


def test_patching_a_non_uuid_product_is_a_404_problem(api, admin):
    assert_problem(api.call("PATCH", "/api/inventory/products/abc", token=admin, json_body={"name": "X"}), 404)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"price_cents": -1}, "price_cents"),
        ({"price_cents": "5"}, "price_cents"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"active": "maybe"}, "active"),
        ({"sku": "NEW-SKU"}, "sku"),
        ({"on_hand": 5}, "on_hand"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_an_invalid_patch_is_a_422_naming_the_field_and_changes_nothing(api, admin, product, body, field):
    assert_problem(api.call("PATCH", f"/api/inventory/products/{product['id']}", token=admin, json_body=body),
                   422, field)
    after = api.ok("GET", f"/api/inventory/products/{product['id']}")
    assert (after["name"], after["price_cents"], after["active"], after["sku"]) == (
        product["name"], product["price_cents"], True, product["sku"])


def test_a_deactivated_product_leaves_the_public_list_but_get_by_id_shows_active_false(api, admin):
    created = create_product(api, admin)
    listed, _ = walk(api, "/api/inventory/products", limit=100)
    assert created["id"] in listed
    api.ok("PATCH", f"/api/inventory/products/{created['id']}", token=admin, json_body={"active": False})
    listed, _ = walk(api, "/api/inventory/products", limit=100)
    assert created["id"] not in listed
    got = api.ok("GET", f"/api/inventory/products/{created['id']}")
    assert got["active"] is False
    api.ok("PATCH", f"/api/inventory/products/{created['id']}", token=admin, json_body={"active": True})
    listed, _ = walk(api, "/api/inventory/products", limit=100)
    assert created["id"] in listed


# == Inventory: stock ================================================================
def stock(api, token, product_id, body):
    return api.call("POST", f"/api/inventory/products/{product_id}/stock", token=token, json_body=body)


def test_a_positive_stock_delta_by_an_admin_raises_on_hand_and_available(api, admin):
    created = create_product(api, admin, stock=5)
    status, _, body = stock(api, admin, created["id"], {"delta": 7, "reason": "delivery"})
    assert status == 200, body
    assert_product_shape(body)
    assert (body["on_hand"], body["reserved"], body["available"]) == (12, 0, 12)
    assert parse_time(body["updated_at"]) >= parse_time(created["updated_at"])
    assert api.ok("GET", f"/api/inventory/products/{created['id']}")["on_hand"] == 12


def test_a_negative_stock_delta_within_available_lowers_on_hand(api, admin):
    created = create_product(api, admin, stock=5)
    status, _, body = stock(api, admin, created["id"], {"delta": -5, "reason": "write-off"})
    assert status == 200 and (body["on_hand"], body["available"]) == (0, 0)


def test_a_stock_delta_that_would_make_available_negative_is_a_409_and_leaves_on_hand_unchanged(api, admin):
    created = create_product(api, admin, stock=5)
    assert_problem(stock(api, admin, created["id"], {"delta": -6, "reason": "write-off"}), 409)
    after = api.ok("GET", f"/api/inventory/products/{created['id']}")
    assert (after["on_hand"], after["reserved"], after["available"]) == (5, 0, 5)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"delta": 0, "reason": "nothing"}, "delta"),
        ({"delta": 5}, "reason"),
        ({"delta": 5, "reason": ""}, "reason"),
        ({"reason": "no delta"}, "delta"),
        ({"delta": "5", "reason": "string"}, "delta"),
        ({"delta": 1.5, "reason": "float"}, "delta"),
        ({"delta": 5, "reason": "x", "who": "me"}, "who"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_an_invalid_stock_body_is_a_422_naming_the_field(api, admin, product, body, field):
    assert_problem(stock(api, admin, product["id"], body), 422, field)
    assert api.ok("GET", f"/api/inventory/products/{product['id']}")["on_hand"] == product["on_hand"]


def test_a_customer_adjusting_stock_is_a_403_problem(api, shopper, product):
    assert_problem(stock(api, shopper, product["id"], {"delta": 5, "reason": "gift"}), 403)


def test_adjusting_stock_without_a_token_is_a_401(api, product):
    assert_problem(stock(api, None, product["id"], {"delta": 5, "reason": "gift"}), 401)


def test_adjusting_stock_of_an_unknown_product_is_a_404_problem(api, admin):
    assert_problem(stock(api, admin, str(uuid.uuid4()), {"delta": 5, "reason": "delivery"}), 404)


def test_adjusting_stock_of_a_non_uuid_product_is_a_404_problem(api, admin):
    assert_problem(stock(api, admin, "abc", {"delta": 5, "reason": "delivery"}), 404)


def test_a_stock_delta_that_would_overflow_on_hand_is_refused_without_a_500(api, admin):
    # On-hand stock is capped at 1e9 units, far below the integer column's limit.
    created = create_product(api, admin, stock=1_000_000_000)
    response = stock(api, admin, created["id"], {"delta": 1, "reason": "one too many"})
    assert response[0] == 409, response
    assert_problem(response, 409)
    assert api.ok("GET", f"/api/inventory/products/{created['id']}")["on_hand"] == 1_000_000_000


@pytest.mark.parametrize("where", ["create sku", "create name", "create description", "patch name",
                                   "patch description", "stock reason"])
def test_a_nul_character_in_a_text_field_is_a_422_not_a_500(api, admin, product, where):
    if where.startswith("create"):
        field = where.split()[1]
        body = {"sku": new_sku(), "name": "Widget", "price_cents": 1, field: "bad\u0000text"}
        response = api.call("POST", "/api/inventory/products", token=admin, json_body=body)
    elif where.startswith("patch"):
        field = where.split()[1]
        response = api.call("PATCH", f"/api/inventory/products/{product['id']}", token=admin,
                            json_body={field: "bad\u0000text"})
    else:
        field = "reason"
        response = stock(api, admin, product["id"], {"delta": 1, "reason": "bad\u0000text"})
    assert_problem(response, 422, field)


# == Orders: placement ===============================================================
def test_placing_an_order_without_a_token_is_a_401(api, product):
    assert_problem(api.call("POST", "/api/orders", json_body={"items": [line(product["id"])]}), 401)


def test_placing_an_order_with_a_revoked_token_is_a_401(api, product):
    token = register(api)["access_token"]
    api.ok("POST", "/api/auth/logout", 204, token=token)
    assert_problem(api.call("POST", "/api/orders", token=token, json_body={"items": [line(product["id"])]}), 401)


def test_a_placed_order_is_202_pending_with_location_prices_from_the_catalog_and_history(api, admin, customer):
    a = create_product(api, admin, stock=10, price_cents=700)
    b = create_product(api, admin, stock=10, price_cents=1999, currency="USD")
    status, headers, order = api.call("POST", "/api/orders", token=customer,
                                      json_body={"items": [line(a["id"], 2), line(b["id"], 3)]})
    assert status == 202, order
    assert_order_shape(order)
    assert headers["Location"] == f"/api/orders/{order['id']}"
    assert order["status"] == "pending" and order["reason"] is None
    assert order["items"] == [
        {"product_id": a["id"], "name": a["name"], "quantity": 2, "unit_price_cents": 700},
        {"product_id": b["id"], "name": b["name"], "quantity": 3, "unit_price_cents": 1999},
    ]
    assert order["total_cents"] == 2 * 700 + 3 * 1999 and order["currency"] == "USD"
    assert len(order["history"]) == 1
    assert order["history"][0]["status"] == "pending" and order["history"][0]["reason"] is None
    me = api.ok("GET", "/api/users/me", token=customer)
    assert order["user_id"] == me["id"]
    created = datetime.fromisoformat(order["created_at"])
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 120


def test_an_order_takes_the_currency_of_its_products(api, admin, shopper):
    p = create_product(api, admin, stock=10, price_cents=450, currency="EUR")
    order = place(api, shopper, [(p["id"], 2)])
    assert (order["currency"], order["total_cents"]) == ("EUR", 900)


def test_an_order_of_50_lines_and_quantity_1000_is_accepted(api, shopper, fifty_products):
    lines = [(p["id"], 1000 if n == 0 else 1) for n, p in enumerate(fifty_products)]
    order = place(api, shopper, lines)
    assert len(order["items"]) == 50 and order["items"][0]["quantity"] == 1000
    assert order["total_cents"] == 1000 * 100 + sum(100 + n for n in range(1, 50))


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "items"),
        ({"items": []}, "items"),
        ({"items": None}, "items"),
        ({"items": "all of them"}, "items"),
        ({"items": [{"quantity": 1}]}, "items.0.product_id"),
        ({"items": [{"product_id": "PRODUCT"}]}, "items.0.quantity"),
        ({"items": [{"product_id": "not-a-uuid", "quantity": 1}]}, "items.0.product_id"),
        ({"items": [{"product_id": "PRODUCT", "quantity": 0}]}, "items.0.quantity"),
        ({"items": [{"product_id": "PRODUCT", "quantity": 1001}]}, "items.0.quantity"),
        ({"items": [{"product_id": "PRODUCT", "quantity": -1}]}, "items.0.quantity"),
        ({"items": [{"product_id": "PRODUCT", "quantity": "2"}]}, "items.0.quantity"),
        ({"items": [{"product_id": "PRODUCT", "quantity": 1.5}]}, "items.0.quantity"),
        ({"items": [{"product_id": "PRODUCT", "quantity": True}]}, "items.0.quantity"),
        ({"items": [{"product_id": 42, "quantity": 1}]}, "items.0.product_id"),
        ({"items": [{"product_id": "PRODUCT", "quantity": 1, "price": 1}]}, "items.0.price"),
        ({"items": [{"product_id": "PRODUCT", "quantity": 1}], "coupon": "FREE"}, "coupon"),
        ({"items": [{"product_id": "PRODUCT", "quantity": 1}, {"product_id": "PRODUCT", "quantity": 2}]},
         "items.1.product_id"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_an_invalid_order_body_is_a_422_naming_the_field(api, shopper, product, body, field):
    body = json.loads(json.dumps(body).replace("PRODUCT", product["id"]))
    assert_problem(api.call("POST", "/api/orders", token=shopper, json_body=body), 422, field)


def test_an_order_line_that_is_not_an_object_is_a_422_naming_that_line(api, shopper):
    problem = assert_problem(api.call("POST", "/api/orders", token=shopper, json_body={"items": [7]}), 422)
    assert list(problem["errors"]) == ["items.0"], problem["errors"]


def test_an_order_of_51_lines_is_a_422_naming_items(api, shopper, fifty_products, product):
    lines = [line(p["id"]) for p in fifty_products] + [line(product["id"])]
    assert_problem(api.call("POST", "/api/orders", token=shopper, json_body={"items": lines}), 422, "items")


def test_an_order_naming_an_unknown_product_is_a_422(api, shopper, product):
    body = {"items": [line(product["id"]), line(str(uuid.uuid4()))]}
    problem = assert_problem(api.call("POST", "/api/orders", token=shopper, json_body=body), 422)
    assert "items.1.product_id" in problem.get("errors", {}), problem
    assert "items.0.product_id" not in problem.get("errors", {}), problem


def test_a_rejected_placement_creates_no_order(api, customer):
    api.call("POST", "/api/orders", token=customer, json_body={"items": [line(str(uuid.uuid4()))]})
    api.call("POST", "/api/orders", token=customer, json_body={"items": []})
    assert api.ok("GET", "/api/orders", token=customer)["items"] == []


# == Orders: reading =================================================================
def test_the_order_list_holds_only_the_callers_orders_newest_first(api, customer, shopper, product):
    mine = [place(api, customer, [(product["id"], n)])["id"] for n in (1, 2, 3)]
    theirs = place(api, shopper, [(product["id"], 1)])["id"]
    page = api.ok("GET", "/api/orders", token=customer)
    assert set(page) >= {"items", "next_cursor"} and page["next_cursor"] is None
    assert [o["id"] for o in page["items"]] == list(reversed(mine))
    assert theirs not in [o["id"] for o in page["items"]]
    for order in page["items"]:
        assert_order_shape(order)


def test_the_order_list_paginates_with_limit_and_cursor(api, customer, product):
    placed = [place(api, customer, [(product["id"], 1)])["id"] for _ in range(5)]
    ids, pages = walk(api, "/api/orders", limit=2, token=customer)
    assert ids == list(reversed(placed))
    assert [len(p["items"]) for p in pages] == [2, 2, 1] and pages[-1]["next_cursor"] is None


def test_an_empty_order_list_is_items_empty_and_a_null_cursor(api, customer):
    page = api.ok("GET", "/api/orders", token=customer)
    assert page["items"] == [] and page["next_cursor"] is None


def test_the_order_list_needs_a_token(api):
    assert_problem(api.call("GET", "/api/orders"), 401)


@pytest.mark.parametrize("limit", ["0", "101", "x"])
def test_an_order_list_limit_outside_1_to_100_is_a_422_naming_limit(api, shopper, limit):
    assert_problem(api.call("GET", f"/api/orders?limit={limit}", token=shopper), 422, "limit")


def test_a_garbage_order_cursor_is_a_422_naming_cursor(api, shopper):
    assert_problem(api.call("GET", "/api/orders?cursor=garbage", token=shopper), 422, "cursor")


def test_an_order_cursor_with_an_out_of_range_timestamp_is_a_422_naming_cursor(api, shopper):
    response = api.call("GET", f"/api/orders?cursor={cursor_for('0001-01-01T00:00:00+14:00')}", token=shopper)
    assert_problem(response, 422, "cursor")


def test_the_owner_reads_an_order(api, customer, product):
    order = place(api, customer, [(product["id"], 2)])
    got = api.ok("GET", f"/api/orders/{order['id']}", token=customer)
    assert_order_shape(got)
    assert got["id"] == order["id"] and got["items"] == order["items"] and got["created_at"] == order["created_at"]


def test_another_users_order_is_a_404(api, customer, shopper, product):
    order = place(api, customer, [(product["id"], 1)])
    assert_problem(api.call("GET", f"/api/orders/{order['id']}", token=shopper), 404)


def test_an_admin_reads_any_order(api, admin, customer, product):
    order = place(api, customer, [(product["id"], 1)])
    assert api.ok("GET", f"/api/orders/{order['id']}", token=admin)["id"] == order["id"]


def test_an_unknown_order_is_a_404(api, shopper):
    assert_problem(api.call("GET", f"/api/orders/{uuid.uuid4()}", token=shopper), 404)


@pytest.mark.parametrize("bad_id", ["abc", "42", "00000000-0000-0000-0000-00000000000z"])
def test_an_order_id_that_is_not_a_uuid_is_a_404(api, shopper, bad_id):
    assert_problem(api.call("GET", f"/api/orders/{bad_id}", token=shopper), 404)


def test_reading_an_order_needs_a_token(api, product, customer):
    order = place(api, customer, [(product["id"], 1)])
    assert_problem(api.call("GET", f"/api/orders/{order['id']}"), 401)


# == Orders: cancel ==================================================================
def cancel(api, token, order_id):
    return api.call("POST", f"/api/orders/{order_id}/cancel", token=token)


def assert_cancelled_from_pending(order_id, response):
    """A pending order cancels: 200, the order cancelled with reason customer, history pending -> cancelled."""
    status, _, body = response
    assert status == 200, (status, body)
    assert_order_shape(body)
    assert (body["id"], body["status"], body["reason"]) == (order_id, "cancelled", "customer")
    assert [(h["status"], h["reason"]) for h in body["history"]] == [("pending", None), ("cancelled", "customer")]


def test_cancelling_a_pending_order_is_200_cancelled_with_reason_customer(api, idle_orders, customer, product):
    order = place(idle_orders, customer, [(product["id"], 1)])
    assert_cancelled_from_pending(order["id"], cancel(idle_orders, customer, order["id"]))
    got = api.ok("GET", f"/api/orders/{order['id']}", token=customer)
    assert (got["status"], got["reason"]) == ("cancelled", "customer")


def test_cancelling_an_order_twice_is_a_409_the_second_time(api, idle_orders, customer, product):
    order = place(idle_orders, customer, [(product["id"], 1)])
    assert_cancelled_from_pending(order["id"], cancel(idle_orders, customer, order["id"]))
    assert_problem(cancel(idle_orders, customer, order["id"]), 409)
    assert_problem(cancel(api, customer, order["id"]), 409)
    got = api.ok("GET", f"/api/orders/{order['id']}", token=customer)
    assert [h["status"] for h in got["history"]] == ["pending", "cancelled"]


def test_an_admin_cancels_any_order(api, idle_orders, admin, customer, product):
    order = place(idle_orders, customer, [(product["id"], 1)])
    assert_cancelled_from_pending(order["id"], cancel(idle_orders, admin, order["id"]))
    assert api.ok("GET", f"/api/orders/{order['id']}", token=customer)["status"] == "cancelled"


def test_cancelling_another_users_order_is_a_404_and_leaves_it_alone(api, customer, shopper, product):
    order = place(api, customer, [(product["id"], 1)])
    assert_problem(cancel(api, shopper, order["id"]), 404)
    assert api.ok("GET", f"/api/orders/{order['id']}", token=customer)["status"] != "cancelled"


def test_cancelling_an_unknown_order_is_a_404(api, shopper):
    assert_problem(cancel(api, shopper, str(uuid.uuid4())), 404)


def test_cancelling_a_non_uuid_order_is_a_404(api, shopper):
    assert_problem(cancel(api, shopper, "abc"), 404)


def test_cancelling_without_a_token_is_a_401(api, customer, product):
    order = place(api, customer, [(product["id"], 1)])
    assert_problem(cancel(api, None, order["id"]), 401)


# == Orders: idempotency =============================================================
def test_the_same_idempotency_key_and_body_return_the_same_order_and_create_nothing(api, customer, product):
    key = uuid.uuid4().hex
    first = place(api, customer, [(product["id"], 2)], key=key)
    status, headers, again = api.call("POST", "/api/orders", token=customer, headers={"Idempotency-Key": key},
                                      json_body={"items": [line(product["id"], 2)]})
    assert status in (200, 202), again
    assert again["id"] == first["id"] and again["items"] == first["items"]
    assert headers["Location"] == f"/api/orders/{first['id']}"
    assert [o["id"] for o in api.ok("GET", "/api/orders", token=customer)["items"]] == [first["id"]]


def test_the_same_idempotency_key_with_a_different_body_is_a_422(api, customer, product):
    key = uuid.uuid4().hex
    first = place(api, customer, [(product["id"], 1)], key=key)
    response = api.call("POST", "/api/orders", token=customer, headers={"Idempotency-Key": key},
                        json_body={"items": [line(product["id"], 3)]})
    assert_problem(response, 422, "Idempotency-Key")
    assert [o["id"] for o in api.ok("GET", "/api/orders", token=customer)["items"]] == [first["id"]]


def test_an_idempotency_key_belongs_to_one_user(api, customer, product):
    key = uuid.uuid4().hex
    first = place(api, customer, [(product["id"], 1)], key=key)
    other = register(api)["access_token"]
    theirs = place(api, other, [(product["id"], 1)], key=key)
    assert theirs["id"] != first["id"] and theirs["user_id"] != first["user_id"]
    assert api.ok("GET", f"/api/orders/{first['id']}", token=customer)["user_id"] == first["user_id"]


def test_different_idempotency_keys_create_different_orders(api, customer, product):
    a = place(api, customer, [(product["id"], 1)], key=uuid.uuid4().hex)
    b = place(api, customer, [(product["id"], 1)], key=uuid.uuid4().hex)
    assert a["id"] != b["id"]


def test_an_empty_idempotency_key_is_a_422(api, shopper, product):
    response = api.call("POST", "/api/orders", token=shopper, headers={"Idempotency-Key": ""},
                        json_body={"items": [line(product["id"])]})
    assert_problem(response, 422, "Idempotency-Key")


# == Conventions: bodies =============================================================
@pytest.mark.parametrize("body", [b"{bad json", b'{"items": [', b"\xff\xfe{}", b"{'items': []}"])
@pytest.mark.parametrize("route", ["orders", "products", "patch", "stock"])
def test_malformed_json_is_a_400_problem(api, admin, product, route, body):
    path, method = {"orders": ("/api/orders", "POST"), "products": ("/api/inventory/products", "POST"),
                    "patch": (f"/api/inventory/products/{product['id']}", "PATCH"),
                    "stock": (f"/api/inventory/products/{product['id']}/stock", "POST")}[route]
    assert_problem(api.call(method, path, token=admin, body=body, headers=JSON), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
@pytest.mark.parametrize("route", ["orders", "products"])
def test_a_body_that_is_not_application_json_is_a_415_problem(api, admin, product, route, content_type):
    path = "/api/orders" if route == "orders" else "/api/inventory/products"
    body = json.dumps({"items": [line(product["id"])]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    assert_problem(api.call("POST", path, token=admin, body=body, headers=headers), 415)


@pytest.mark.parametrize("route", ["orders", "products"])
def test_a_body_over_1_mib_is_a_413_problem(api, admin, route):
    path = "/api/orders" if route == "orders" else "/api/inventory/products"
    body = b'{"pad": "' + b"x" * MIB + b'"}'
    # A fresh pool: the server does not read the refused body, so that connection cannot be reused.
    assert_problem(Api(api.base).call("POST", path, token=admin, body=body, headers=JSON), 413)


def test_a_body_just_under_1_mib_is_not_a_413(api, admin):
    body = b'{"items": [], "pad": "' + b"x" * (MIB - 100) + b'"}'
    status, _, _ = Api(api.base).call("POST", "/api/orders", token=admin, body=body, headers=JSON)
    assert status == 422


@pytest.mark.parametrize("body", [b"null", b"[]", b'"items"', b"42"])
def test_a_json_body_that_is_not_an_object_is_a_422_problem(api, shopper, body):
    assert_problem(api.call("POST", "/api/orders", token=shopper, body=body, headers=JSON), 422)


@pytest.mark.parametrize("route", ["orders", "products"])
def test_a_json_integer_too_long_to_parse_is_a_4xx_not_a_500(api, admin, product, route):
    digits = b"1" + b"0" * 5000
    if route == "orders":
        path, body = "/api/orders", b'{"items": [{"product_id": "%s", "quantity": %s}]}' % (
            product["id"].encode(), digits)
    else:
        path, body = "/api/inventory/products", b'{"sku": "S", "name": "N", "price_cents": %s}' % digits
    response = api.call("POST", path, token=admin, body=body, headers=JSON)
    assert response[0] in (400, 422), response
    assert_problem(response, response[0])


@pytest.mark.parametrize("route", ["orders", "products"])
def test_deeply_nested_json_is_a_4xx_not_a_500(api, admin, route):
    path = "/api/orders" if route == "orders" else "/api/inventory/products"
    body = b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = api.call("POST", path, token=admin, body=body, headers=JSON)
    assert response[0] in (400, 422), response
    assert_problem(response, response[0])


# == Conventions: X-Request-ID =======================================================
@pytest.mark.parametrize("case", ["list products", "get product", "missing product", "create product",
                                  "forbidden create", "place order", "invalid order", "list orders",
                                  "unauthenticated orders", "cancel unknown"])
def test_an_x_request_id_sent_to_the_gateway_is_echoed_back(api, admin, shopper, product, case):
    rid = f"test-{uuid.uuid4().hex}"
    h = {"X-Request-ID": rid}
    method, path, token, body = {
        "list products": ("GET", "/api/inventory/products", None, None),
        "get product": ("GET", f"/api/inventory/products/{product['id']}", None, None),
        "missing product": ("GET", f"/api/inventory/products/{uuid.uuid4()}", None, None),
        "create product": ("POST", "/api/inventory/products", admin,
                           {"sku": new_sku(), "name": "N", "price_cents": 1}),
        "forbidden create": ("POST", "/api/inventory/products", shopper,
                             {"sku": new_sku(), "name": "N", "price_cents": 1}),
        "place order": ("POST", "/api/orders", shopper, {"items": [line(product["id"])]}),
        "invalid order": ("POST", "/api/orders", shopper, {"items": []}),
        "list orders": ("GET", "/api/orders", shopper, None),
        "unauthenticated orders": ("GET", "/api/orders", None, None),
        "cancel unknown": ("POST", f"/api/orders/{uuid.uuid4()}/cancel", shopper, None),
    }[case]
    _, headers, _ = api.call(method, path, token=token, json_body=body, headers=h)
    assert headers.get("X-Request-ID") == rid


def test_an_x_request_id_is_generated_when_none_is_sent(api, shopper):
    _, first, _ = api.call("GET", "/api/inventory/products?limit=1")
    _, second, _ = api.call("GET", "/api/orders?limit=1", token=shopper)
    assert first.get("X-Request-ID") and second.get("X-Request-ID")
    assert first["X-Request-ID"] != second["X-Request-ID"]


# == With a worker: orders progress (keep these last; the worker is session-wide) ======
def test_a_fulfilled_order_cannot_be_cancelled_409_and_its_stock_is_gone(api, admin, customer, live_worker):
    p = create_product(api, admin, stock=4, price_cents=250)
    order = place(api, customer, [(p["id"], 3)])
    done = wait_terminal(api, customer, order["id"])
    assert (done["status"], done["reason"]) == ("fulfilled", None)
    assert [h["status"] for h in done["history"]] == ["pending", "reserved", "fulfilled"]
    assert_order_shape(done)
    assert_problem(cancel(api, customer, order["id"]), 409)
    assert api.ok("GET", f"/api/orders/{order['id']}", token=customer)["status"] == "fulfilled"
    after = wait_for(lambda: (q := api.ok("GET", f"/api/inventory/products/{p['id']}"))["reserved"] == 0 and q)
    assert (after["on_hand"], after["available"]) == (1, 1)


def test_an_order_beyond_stock_is_rejected_out_of_stock_and_cannot_be_cancelled(api, admin, customer, live_worker):
    p = create_product(api, admin, stock=1)
    order = place(api, customer, [(p["id"], 2)])
    done = wait_terminal(api, customer, order["id"])
    assert (done["status"], done["reason"]) == ("rejected", "out_of_stock")
    assert_problem(cancel(api, customer, order["id"]), 409)


# -- orders' read model of the catalog (a worker applies inventory.product_changed) ------
def read_model(rt, product_id: str) -> dict | None:
    """What orders' read model of the catalog holds for the product."""
    from services.orders import repository

    found = rt.db.run(repository.catalog_products, rt.db.manager("orders"), product_ids=[uuid.UUID(product_id)])
    return found.get(uuid.UUID(product_id))


def test_an_order_keeps_the_price_it_was_placed_at(api, admin, customer, rt, live_worker):
    p = create_product(api, admin, stock=10, price_cents=300)
    order = place(api, customer, [(p["id"], 1)])
    api.ok("PATCH", f"/api/inventory/products/{p['id']}", token=admin, json_body={"price_cents": 999})
    again = api.ok("GET", f"/api/orders/{order['id']}", token=customer)
    assert again["items"][0]["unit_price_cents"] == 300 and again["total_cents"] == 300
    wait_for(lambda: (read_model(rt, p["id"]) or {}).get("price_cents") == 999, what="the new price in orders")
    assert place(api, customer, [(p["id"], 1)])["total_cents"] == 999


def test_an_order_naming_an_inactive_product_is_a_422(api, admin, shopper, rt, live_worker):
    p = create_product(api, admin, stock=10)
    api.ok("PATCH", f"/api/inventory/products/{p['id']}", token=admin, json_body={"active": False})
    wait_for(lambda: read_model(rt, p["id"]) and not read_model(rt, p["id"])["active"],
             what="the deactivation in orders")
    problem = assert_problem(api.call("POST", "/api/orders", token=shopper, json_body={"items": [line(p["id"])]}),
                             422)
    assert "items.0.product_id" in problem.get("errors", {}), problem


def test_the_read_model_follows_every_product_change_and_keeps_the_newest(api, admin, rt, live_worker):
    p = create_product(api, admin, stock=10, price_cents=500)
    wait_for(lambda: read_model(rt, p["id"]), what="the new product in orders")
    for price in (501, 502, 503):
        api.ok("PATCH", f"/api/inventory/products/{p['id']}", token=admin, json_body={"price_cents": price})
    api.ok("PATCH", f"/api/inventory/products/{p['id']}", token=admin, json_body={"name": "Renamed"})
    entry = wait_for(lambda: (e := read_model(rt, p["id"])) and e["name"] == "Renamed" and e)
    assert (entry["price_cents"], entry["version"], entry["active"]) == (503, 5, True)
    # An older event arriving late (a redelivery) changes nothing.
    from services.orders import repository

    rt.db.run(repository.track_product, rt.db.manager("orders"),
              product={"product_id": p["id"], "sku": p["sku"], "name": "Stale", "price_cents": 1,
                       "currency": "USD", "active": False, "version": 2})
    assert read_model(rt, p["id"])["name"] == "Renamed"


def test_placing_an_order_for_known_products_asks_inventory_nothing(api, admin, customer, rt, live_worker,
                                                                     stack_env, live_inventory):
    """With inventory unreachable, products in the read model are still priced and ordered."""
    p = create_product(api, admin, stock=10, price_cents=700)
    wait_for(lambda: read_model(rt, p["id"]), what="the new product in orders")
    port = free_port()  # nothing listens there: inventory is down as far as this orders instance knows
    orders = Live("orders", {**stack_env, "INVENTORY_URL": f"http://127.0.0.1:{port}"})
    try:
        placed = place(Api(orders.url), customer, [(p["id"], 2)])
        assert placed["total_cents"] == 1400 and placed["status"] == "pending"
        # A product it has never heard of needs inventory: 503, not a guess.
        unknown = Api(orders.url).call("POST", "/api/orders", token=customer,
                                       json_body={"items": [line(str(uuid.uuid4()))]})
        assert unknown[0] == 503, unknown
    finally:
        orders.stop()


def test_a_retry_answers_its_order_even_after_the_product_was_deactivated(api, admin, customer, rt, live_worker):
    p = create_product(api, admin, stock=10)
    key = uuid.uuid4().hex
    first = place(api, customer, [(p["id"], 1)], key=key)
    api.ok("PATCH", f"/api/inventory/products/{p['id']}", token=admin, json_body={"active": False})
    status, _, again = api.call("POST", "/api/orders", token=customer, headers={"Idempotency-Key": key},
                                json_body={"items": [line(p["id"], 1)]})
    assert status in (200, 202) and again["id"] == first["id"], again
    # A new order for it is refused once orders has heard of the deactivation.
    wait_for(lambda: not read_model(rt, p["id"])["active"], what="the deactivation in orders")
    response = api.call("POST", "/api/orders", token=customer, headers={"Idempotency-Key": uuid.uuid4().hex},
                        json_body={"items": [line(p["id"], 1)]})
    assert_problem(response, 422, "items.0.product_id")
