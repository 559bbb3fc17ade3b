"""GET /api/inventory/products?q=&in_stock=: the catalog search the storefront uses."""
from __future__ import annotations

import uuid

import pytest

from tests.support import Api, create_product


@pytest.fixture(scope="module")
def api(live_gateway):
    return Api(live_gateway.url)


def test_q_finds_a_text_in_the_name_or_the_sku_in_any_case(api, admin):
    tag = uuid.uuid4().hex[:8]
    by_name = create_product(api, admin, name=f"Reading Lamp {tag.upper()}")
    by_sku = create_product(api, admin, sku=f"LAMP-{tag}-X")
    create_product(api, admin, name="Unrelated")
    found = api.ok("GET", f"/api/inventory/products?q={tag}&limit=100")["items"]
    assert {p["id"] for p in found} == {by_name["id"], by_sku["id"]}


def test_q_takes_like_wildcards_literally(api, admin):
    tag = uuid.uuid4().hex[:8]
    percent = create_product(api, admin, name=f"100% cotton {tag}")
    create_product(api, admin, name=f"100 cotton {tag}")
    found = api.ok("GET", f"/api/inventory/products?q=100%25%20cotton%20{tag}")["items"]
    assert [p["id"] for p in found] == [percent["id"]]
    assert api.ok("GET", f"/api/inventory/products?q=_{tag}")["items"] == []


def test_in_stock_keeps_products_with_stock_available_and_pages_by_cursor(api, admin):
    tag = uuid.uuid4().hex[:8]
    stocked = [create_product(api, admin, name=f"Mug {tag} {i}", stock=3) for i in range(3)]
    create_product(api, admin, name=f"Mug {tag} empty", stock=0)
    seen, cursor = [], None
    while True:
        page = api.ok("GET", f"/api/inventory/products?q={tag}&in_stock=true&limit=2"
                             + (f"&cursor={cursor}" if cursor else ""))
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [p["id"] for p in stocked]
    assert len(api.ok("GET", f"/api/inventory/products?q={tag}&in_stock=false")["items"]) == 4


@pytest.mark.parametrize("query, field", [("q=", "q"), ("q=" + "x" * 101, "q"), ("q=a%0Ab", "q"),
                                          ("in_stock=yes", "in_stock")])
def test_a_bad_search_is_a_422_naming_the_parameter(api, query, field):
    status, _, body = api.call("GET", f"/api/inventory/products?{query}")
    assert status == 422 and field in body["errors"], body


def test_the_search_parameters_are_documented(api):
    document = api.ok("GET", "/api/openapi.json")
    names = {p["name"] for p in document["paths"]["/api/inventory/products"]["get"]["parameters"]}
    assert {"q", "in_stock"} <= names
