"""What the operations console reads and does, black box through the gateway (admins only):
the order search, a product's stock movements, dead letters and their redrive.

Orders of the search tests are written through the orders repository (statuses and times
the pipeline would take a while to reach); the rest goes the way it goes in production:
users' events feed the search by email, fulfilments write stock movements, and a worker
lists and redrives dead letters.
"""
from __future__ import annotations

import uuid
from datetime import timezone

import pytest

from tests.api.test_inventory_orders import assert_order_shape, assert_problem, cursor_for, parse_time, walk
from tests.support import create_product, place, register, wait_for, wait_terminal

ANYONE = "anonymous"


@pytest.fixture(scope="module")
def api(gateway):
    return gateway


@pytest.fixture(scope="module")
def shopper(api):
    return register(api)["access_token"]


def token_of(who: str, *, admin: str, shopper: str) -> str | None:
    return {"admin": admin, "customer": shopper, ANYONE: None}[who]


# -- orders written straight through the repository ----------------------------------------
def new_order(rt, user_id: uuid.UUID, *, total: int = 1000) -> dict:
    from services.orders import repository

    order, _ = rt.db.run(repository.insert_order, rt.db.manager("orders"), user_id=user_id,
                         lines=[{"product_id": uuid.uuid4(), "quantity": 1, "unit_price_cents": total,
                                 "name": "Widget"}],
                         total_cents=total, currency="USD", idempotency_key=None, request_hash="x")
    return order


def rejected(rt, order: dict, reason: str = "out_of_stock") -> None:
    from services.orders import repository

    rt.db.run(repository.apply_reservation, rt.db.manager("orders"), event_id=str(uuid.uuid4()),
              order_id=order["id"], reserved=False, reason=reason, fulfil_now=False)


def cancelled(rt, order: dict) -> None:
    from services.orders import repository

    rt.db.run(repository.cancel, rt.db.manager("orders"), order_id=order["id"], user_id=order["user_id"],
              is_admin=False)


@pytest.fixture(scope="module")
def customer_orders(rt):
    """One customer's five orders, oldest first: pending, rejected (out_of_stock), cancelled
    (customer), rejected (product_unavailable), pending."""
    user_id = uuid.uuid4()
    orders = [new_order(rt, user_id, total=100 * (n + 1)) for n in range(5)]
    rejected(rt, orders[1])
    cancelled(rt, orders[2])
    rejected(rt, orders[3], "product_unavailable")
    return user_id, [str(o["id"]) for o in orders], [o["created_at"] for o in orders]


def search(api, admin, query: str = "", expected=200):
    return api.ok("GET", "/api/orders/search" + query, expected, token=admin)


# == Order search ==========================================================================
def test_the_search_lists_every_customers_orders_newest_first_as_the_usual_order(api, admin, customer_orders):
    user_id, ids, _ = customer_orders
    page = search(api, admin, f"?q={user_id}")
    assert [o["id"] for o in page["items"]] == ids[::-1]
    assert page["next_cursor"] is None
    for order in page["items"]:
        assert_order_shape(order)
        assert order["user_id"] == str(user_id)


def test_the_search_without_filters_is_newest_first_over_every_customer(api, admin, rt, customer_orders):
    newest = new_order(rt, uuid.uuid4())
    page = search(api, admin, "?limit=3")
    assert page["items"][0]["id"] == str(newest["id"])
    times = [parse_time(o["created_at"]) for o in page["items"]]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("query, positions", [
    ("status=pending", [4, 0]),
    ("status=rejected", [3, 1]),
    ("status=rejected&reason=out_of_stock", [1]),
    ("reason=customer", [2]),
    ("status=fulfilled", []),
])
def test_the_search_filters_by_status_and_reason(api, admin, customer_orders, query, positions):
    user_id, ids, _ = customer_orders
    page = search(api, admin, f"?q={user_id}&{query}")
    assert [o["id"] for o in page["items"]] == [ids[p] for p in positions]


def test_the_search_filters_by_the_time_an_order_was_placed(api, admin, customer_orders):
    user_id, ids, times = customer_orders
    window = f"created_from={times[1].isoformat()}&created_to={times[3].isoformat()}".replace("+", "%2B")
    page = search(api, admin, f"?q={user_id}&{window}")
    assert [o["id"] for o in page["items"]] == [ids[2], ids[1]]  # from is inclusive, to exclusive
    # Without an offset a time is UTC.
    naive = times[4].astimezone(timezone.utc).replace(tzinfo=None)
    page = search(api, admin, f"?q={user_id}&created_from={naive.isoformat()}")
    assert [o["id"] for o in page["items"]] == [ids[4]]


def test_a_window_that_is_empty_or_at_the_edges_of_time_is_no_error(api, admin, customer_orders):
    user_id, ids, times = customer_orders
    assert search(api, admin, f"?q={user_id}&created_from=2025-02-01T00:00:00Z&created_to=2025-01-01T00:00:00Z") == {
        "items": [], "next_cursor": None}
    # Before year 1 in UTC: the earliest moment; lower-case t and z and a leap second are RFC 3339 too.
    everything = f"?q={user_id}&created_from=0001-01-01T00:00:00%2B14:00&created_to=9999-12-31t23:59:60z"
    assert [o["id"] for o in search(api, admin, everything)["items"]] == ids[::-1]


def test_the_search_finds_one_order_by_its_id(api, admin, customer_orders):
    _, ids, _ = customer_orders
    assert [o["id"] for o in search(api, admin, f"?q={ids[2]}")["items"]] == [ids[2]]
    assert search(api, admin, f"?q={uuid.uuid4()}")["items"] == []


def test_the_search_pages_with_a_cursor_across_two_pages(api, admin, customer_orders):
    user_id, ids, _ = customer_orders
    first = search(api, admin, f"?q={user_id}&limit=3")
    assert [o["id"] for o in first["items"]] == ids[:1:-1] and first["next_cursor"]
    second = search(api, admin, f"?q={user_id}&limit=3&cursor={first['next_cursor']}")
    assert [o["id"] for o in second["items"]] == ids[1::-1] and second["next_cursor"] is None


def test_the_search_finds_a_customers_orders_by_their_email_in_any_case(api, admin, live_worker):
    user = register(api)
    product = create_product(api, admin, stock=5)
    placed = [place(api, user["access_token"], [(product["id"], 1)])["id"] for _ in range(2)]
    register(api)  # someone else, with no orders
    query = f"?q={user['email'].upper()}"
    # Orders learns the address from users' user.registered event.
    page = wait_for(lambda: (p := search(api, admin, query))["items"] and p, what="the customer's orders")
    assert [o["id"] for o in page["items"]] == placed[::-1]
    assert search(api, admin, "?q=nobody-" + uuid.uuid4().hex[:8] + "@example.com")["items"] == []


@pytest.mark.parametrize("query, field", [
    ("status=bogus", "status"),
    ("reason=bogus", "reason"),
    ("created_from=notadate", "created_from"),
    ("created_to=2025-13-01T00:00:00Z", "created_to"),
    ("q=not-an-id-nor-an-email", "q"),
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("cursor=garbage", "cursor"),
    (f"cursor={cursor_for('not-a-date')}", "cursor"),
])
def test_bad_search_input_is_a_422_naming_the_field(api, admin, query, field):
    assert_problem(api.call("GET", "/api/orders/search?" + query, token=admin), 422, field)


def test_the_callers_own_list_is_unchanged_for_an_admin(api, admin, customer_orders):
    user_id, _, _ = customer_orders
    mine = api.ok("GET", "/api/orders", token=admin)["items"]
    assert all(o["user_id"] != str(user_id) for o in mine)


# == Stock movements =======================================================================
def movements(api, admin, product_id: str, query: str = "", expected=200):
    return api.ok("GET", f"/api/inventory/products/{product_id}/movements{query}", expected, token=admin)


def test_a_products_movements_are_its_ledger_newest_first(api, admin, shopper, live_worker):
    product = create_product(api, admin, stock=10)
    for delta, reason in ((5, "delivery"), (-3, "damaged")):
        api.ok("POST", f"/api/inventory/products/{product['id']}/stock", token=admin,
               json_body={"delta": delta, "reason": reason})
    order = place(api, shopper, [(product["id"], 2)])
    assert wait_terminal(api, shopper, order["id"])["status"] == "fulfilled"
    items = wait_for(lambda: len(i := movements(api, admin, product["id"])["items"]) == 4 and i,
                     what="the fulfilment's movement")
    admin_id = items[1]["actor"]
    assert admin_id.startswith("user:")
    assert [(m["delta"], m["reason"], m["actor"], m["order_id"]) for m in items] == [
        (-2, "order fulfilled", "system", order["id"]),
        (-3, "damaged", admin_id, None),
        (5, "delivery", admin_id, None),
        (10, "initial stock", admin_id, None),
    ]
    assert sum(m["delta"] for m in items) == api.ok("GET", f"/api/inventory/products/{product['id']}")["on_hand"]
    times = [parse_time(m["created_at"]) for m in items]
    assert times == sorted(times, reverse=True)
    assert [m["id"] for m in items] == sorted((m["id"] for m in items), reverse=True)


def test_movements_page_with_a_cursor_across_two_pages(api, admin):
    product = create_product(api, admin, stock=1)
    for delta in (2, 3):
        api.ok("POST", f"/api/inventory/products/{product['id']}/stock", token=admin,
               json_body={"delta": delta, "reason": "delivery"})
    first = movements(api, admin, product["id"], "?limit=2")
    assert [m["delta"] for m in first["items"]] == [3, 2] and first["next_cursor"]
    second = movements(api, admin, product["id"], f"?limit=2&cursor={first['next_cursor']}")
    assert [m["delta"] for m in second["items"]] == [1] and second["next_cursor"] is None
    ids, _ = walk(api, f"/api/inventory/products/{product['id']}/movements", limit=1, token=admin)
    assert ids == [m["id"] for m in first["items"] + second["items"]]


def test_a_product_without_movements_has_an_empty_ledger(api, admin):
    product = create_product(api, admin, stock=0)
    assert movements(api, admin, product["id"]) == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("product_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_the_movements_of_an_unknown_product_are_a_404(api, admin, product_id):
    assert_problem(api.call("GET", f"/api/inventory/products/{product_id}/movements", token=admin), 404)


@pytest.mark.parametrize("query, field", [
    ("cursor=garbage", "cursor"),
    # An orders cursor (a UUID row id) is not a movements cursor (a bigint one).
    (f"cursor={cursor_for('2025-01-01T00:00:00+00:00')}", "cursor"),
    ("limit=0", "limit"),
])
def test_bad_movements_input_is_a_422_naming_the_field(api, admin, query, field):
    product = create_product(api, admin, stock=1)
    response = api.call("GET", f"/api/inventory/products/{product['id']}/movements?{query}", token=admin)
    assert_problem(response, 422, field)


# == Dead letters ==========================================================================
def record_dead_letter(rt, event: dict, *, task_name: str = "orders.track_product", queue: str = "orders") -> str:
    """A dead letter as a worker records one (workers/tasks.py)."""
    from infra import dead_letters

    return str(rt.db.run(dead_letters.record, rt.db.manager(dead_letters.SCHEMA), task_name=task_name,
                         task_id=str(uuid.uuid4()), queue=queue, args=[event], kwargs={},
                         error="RuntimeError: the database said no", attempts=1))


def product_event(sku: str | None = None) -> dict:
    product_id = str(uuid.uuid4())
    return {"id": str(uuid.uuid4()), "type": "inventory.product_changed", "occurred_at": "2025-01-15T10:00:00+00:00",
            "payload": {"product_id": product_id, "sku": sku or f"SKU-{uuid.uuid4().hex[:8]}", "name": "Widget",
                        "price_cents": 990, "currency": "USD", "active": True, "version": 1},
            "headers": {}}


def dead_letters_page(api, admin, query: str = "") -> dict:
    return api.ok("GET", "/api/dead-letters" + query, token=admin)


def all_dead_letters(api, admin, state: str = "open") -> list[dict]:
    items, cursor = [], ""
    while True:
        page = dead_letters_page(api, admin, f"?state={state}&limit=100" + (f"&cursor={cursor}" if cursor else ""))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def in_catalog(rt, product_id: str):
    return rt.db.run(rt.db.manager("orders").fetch_one,
                     "SELECT name, price_cents FROM {{tables.catalog}} WHERE product_id = $1", uuid.UUID(product_id))


def test_a_task_that_gives_up_is_listed_with_its_error_and_a_summary_without_its_payload(api, admin, live_worker):
    from workers.celery_app import app as celery

    marker = f"poison-{uuid.uuid4().hex}"
    secret = f"{uuid.uuid4().hex[:8]}@example.com"
    order_id = str(uuid.uuid4())
    celery.send_task("inventory.reserve", queue="inventory", args=[{
        "id": marker, "type": "order.placed", "payload": {"email": secret, "order": order_id}}])

    def listed():
        return next((d for d in dead_letters_page(api, admin)["items"]
                     if d["args_summary"]["events"] and d["args_summary"]["events"][0]["id"] == marker), None)

    letter = wait_for(listed, timeout=30, interval=0.5, what="the dead letter")
    assert (letter["task_name"], letter["queue"], letter["attempts"], letter["redriven_at"]) == (
        "inventory.reserve", "inventory", 1, None)
    assert letter["error"] and letter["task_id"]
    parse_time(letter["created_at"])
    assert letter["args_summary"] == {"arguments": 1, "more_events": 0, "events": [
        {"id": marker, "type": "order.placed", "occurred_at": None, "subject": None}]}
    assert secret not in str(letter)


def test_dead_letters_are_newest_first_and_page_with_a_cursor(api, admin, rt, live_worker):
    events = [product_event() for _ in range(3)]
    mine = [record_dead_letter(rt, e) for e in events]
    ids, pages = walk(api, "/api/dead-letters", limit=2, token=admin)
    assert len(pages) >= 2 and len(ids) == len(set(ids))
    assert [i for i in ids if i in mine] == mine[::-1]
    listed = [d for page in pages for d in page["items"]]
    times = [parse_time(d["created_at"]) for d in listed]
    assert times == sorted(times, reverse=True)
    newest = next(d for d in listed if d["id"] == mine[-1])
    assert (newest["task_name"], newest["queue"], newest["error"], newest["attempts"]) == (
        "orders.track_product", "orders", "RuntimeError: the database said no", 1)
    assert newest["args_summary"] == {"arguments": 1, "more_events": 0, "events": [{
        "id": events[-1]["id"], "type": "inventory.product_changed", "occurred_at": "2025-01-15T10:00:00+00:00",
        "subject": f"product_id:{events[-1]['payload']['product_id']}"}]}


def test_redriving_one_dead_letter_runs_its_task_again_and_marks_it_redriven(api, admin, rt, live_worker):
    event = product_event()
    letter_id = record_dead_letter(rt, event)
    other_id = record_dead_letter(rt, product_event())
    assert api.ok("POST", f"/api/dead-letters/{letter_id}/redrive", 202, token=admin) == {"accepted": 1}
    # The task ran: orders' read model of the catalog has the product now.
    wait_for(lambda: in_catalog(rt, event["payload"]["product_id"]), what="the redriven event's effect")
    wait_for(lambda: letter_id not in {d["id"] for d in all_dead_letters(api, admin)}, what="it leaving the open ones")
    everything = {d["id"]: d for d in all_dead_letters(api, admin, "all")}
    assert everything[letter_id]["redriven_at"] is not None
    assert everything[other_id]["redriven_at"] is None
    assert other_id in {d["id"] for d in all_dead_letters(api, admin)}
    # Once is enough.
    assert_problem(api.call("POST", f"/api/dead-letters/{letter_id}/redrive", token=admin), 409)


def test_redriving_every_open_dead_letter_runs_each_task_again(api, admin, rt, live_worker):
    events = [product_event() for _ in range(2)]
    ids = [record_dead_letter(rt, e) for e in events]
    accepted = api.ok("POST", "/api/dead-letters/redrive", 202, token=admin)["accepted"]
    assert accepted >= 2
    for event in events:
        wait_for(lambda e=event: in_catalog(rt, e["payload"]["product_id"]), what="each event's effect")
    wait_for(lambda: not {d["id"] for d in all_dead_letters(api, admin)} & set(ids), what="none left open")
    redriven = {d["id"]: d["redriven_at"] for d in all_dead_letters(api, admin, "all")}
    assert all(redriven[i] for i in ids)


@pytest.mark.parametrize("letter_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_redriving_an_unknown_dead_letter_is_a_404(api, admin, letter_id):
    assert_problem(api.call("POST", f"/api/dead-letters/{letter_id}/redrive", token=admin), 404)


@pytest.mark.parametrize("query, field", [
    ("state=bogus", "state"),
    ("cursor=garbage", "cursor"),
    (f"cursor={cursor_for('not-a-date')}", "cursor"),
    ("limit=1000", "limit"),
])
def test_bad_dead_letter_input_is_a_422_naming_the_field(api, admin, query, field):
    assert_problem(api.call("GET", "/api/dead-letters?" + query, token=admin), 422, field)


def test_a_method_the_dead_letter_paths_do_not_have_is_a_405_with_allow(api, admin):
    status, headers, _ = api.call("DELETE", "/api/dead-letters", token=admin)
    assert status == 405 and headers["Allow"].startswith("GET")
    status, headers, _ = api.call("GET", "/api/dead-letters/redrive")
    assert status == 405 and "POST" in headers["Allow"]


# == Who may ===============================================================================
OPERATIONS = [("GET", "/api/orders/search"), ("GET", "/api/inventory/products/{product}/movements"),
              ("GET", "/api/dead-letters"), ("POST", "/api/dead-letters/{letter}/redrive"),
              ("POST", "/api/dead-letters/redrive")]


@pytest.fixture(scope="module")
def targets(api, admin, rt):
    return {"product": create_product(api, admin, stock=1)["id"], "letter": record_dead_letter(rt, product_event())}


@pytest.mark.parametrize("method, path", OPERATIONS)
@pytest.mark.parametrize("who, refused", [(ANYONE, 401), ("customer", 403)])
def test_only_an_admin_may(api, admin, shopper, targets, method, path, who, refused):
    response = api.call(method, path.format(**targets), token=token_of(who, admin=admin, shopper=shopper))
    assert_problem(response, refused)


def test_an_admin_may(api, admin, targets, live_worker):
    for (method, path), status in zip(OPERATIONS, (200, 200, 200, 202, 202)):
        assert api.call(method, path.format(**targets), token=admin)[0] == status, (method, path)


def test_a_customers_bad_input_is_still_a_403(api, shopper):
    """The role is checked before the query: a customer learns nothing from validation."""
    assert_problem(api.call("GET", "/api/orders/search?status=bogus", token=shopper), 403)
    assert_problem(api.call("GET", "/api/dead-letters?state=bogus", token=shopper), 403)

