"""The operations console's views (Flask test client) against the session's real gateway and
services: who may see what, CSRF, the order filters and pages, products and their stock
ledger, dead letters and their redrive, the service registry, escaping. Nothing is mocked:
the web app calls the live gateway with the admin's own token.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from tests.api.test_console_api import cancelled, new_order, product_event, record_dead_letter, rejected
from tests.support import Api, create_product, new_email, place, product_locked, register, wait_for
from tests.web.test_views import CSRF, csrf_of, sign_up

ADMIN_PASSWORD = "admin password"
HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def web_app(settings, live_gateway):
    from app import create_app

    return create_app("web", replace(settings, gateway_url=live_gateway.url, flower_url="http://127.0.0.1:5555/"))


@pytest.fixture(scope="module")
def api(live_gateway):
    return Api(live_gateway.url)


@pytest.fixture(scope="module")
def worker(stack_env, live_orders):
    """A worker of this module's own (dead letters are read by one), stopped after it: other
    modules count on orders staying pending while no worker runs."""
    from tests.conftest import Worker

    started = Worker({**stack_env, "ORDERS_URL": live_orders.url})
    yield started
    started.stop()


@pytest.fixture
def admin_email(rt):
    """An admin of this test's own (login is limited per email: one sign-in each)."""
    from services.users import service

    email = new_email()
    service.create_admin(email=email, password=ADMIN_PASSWORD)
    return email


def sign_in(browser, email: str, password: str) -> None:
    response = browser.post("/login", data={"csrf_token": csrf_of(browser), "email": email, "password": password})
    assert response.status_code == 302, response.get_data(as_text=True)


@pytest.fixture
def admin_browser(web_app, admin_email):
    browser = web_app.test_client()
    sign_in(browser, admin_email, ADMIN_PASSWORD)
    return browser


@pytest.fixture
def customer_browser(web_app):
    browser = web_app.test_client()
    sign_up(browser)
    return browser


@pytest.fixture(scope="module")
def product(api, admin):
    return create_product(api, admin, stock=1, name=f"Console lamp {uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def orders_of_one_customer(rt):
    """One customer's orders, oldest first, each in a state no worker changes: rejected (out of
    stock), cancelled (customer), rejected (product unavailable)."""
    user_id = uuid.uuid4()
    orders = [new_order(rt, user_id, total=100 * (n + 1)) for n in range(3)]
    rejected(rt, orders[0])
    cancelled(rt, orders[1])
    rejected(rt, orders[2], "product_unavailable")
    return str(user_id), [str(o["id"]) for o in orders]


def text(response) -> str:
    return response.get_data(as_text=True)


def rows(page: str, kind: str = "order") -> list[str]:
    return re.findall(rf'<tr id="{kind}-([0-9a-f-]+)"', page)


def csrf_of_page(browser, path: str) -> str:
    return CSRF.search(text(browser.get(path))).group(1)


def pages(product_id: str, order_id: str) -> list[str]:
    return ["/console/", "/console/orders", f"/console/orders/{order_id}", "/console/products",
            "/console/products/new", f"/console/products/{product_id}", f"/console/products/{product_id}/movements",
            "/console/dead-letters", "/console/services"]


# -- who may see what ---------------------------------------------------------------------
def test_anonymous_visitors_are_sent_to_sign_in(web_app, product, orders_of_one_customer):
    browser = web_app.test_client()
    for path in pages(product["id"], orders_of_one_customer[1][0]):
        response = browser.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next=/console"), path


def test_a_customer_gets_a_403_page_and_no_console_link(customer_browser, product, orders_of_one_customer):
    for path in pages(product["id"], orders_of_one_customer[1][0]):
        response = customer_browser.get(path)
        assert response.status_code == 403 and response.mimetype == "text/html", path
        assert "for administrators" in text(response)
    csrf = csrf_of_page(customer_browser, "/")
    for path, data in [(f"/console/products/{product['id']}/stock", {"delta": "5", "reason": "found"}),
                       ("/console/dead-letters/redrive", {}),
                       (f"/console/orders/{orders_of_one_customer[1][0]}/cancel", {})]:
        assert customer_browser.post(path, data={**data, "csrf_token": csrf}).status_code == 403, path
    assert "/console" not in text(customer_browser.get("/"))


def test_an_admin_sees_every_screen_and_a_console_link(admin_browser, product, orders_of_one_customer, worker):
    for path in pages(product["id"], orders_of_one_customer[1][0]):
        response = admin_browser.get(path, follow_redirects=True)
        assert response.status_code == 200, (path, text(response)[:500])
    assert 'href="/console/orders">Console</a>' in text(admin_browser.get("/"))


def test_the_api_refuses_a_customer_even_past_the_consoles_own_check(web_app, api):
    """The role in the session cookie is only for a friendly page: the API's 403 is the guard."""
    browser = web_app.test_client()
    sign_up(browser)
    with browser.session_transaction() as session:
        session["user"] = {**session["user"], "role": "admin"}  # as if the role were taken away since sign-in
    assert browser.get("/console/orders").status_code == 403
    assert browser.get("/console/dead-letters").status_code == 403


# -- CSRF ---------------------------------------------------------------------------------
def test_a_console_form_without_its_csrf_token_is_refused(admin_browser, api, admin, orders_of_one_customer):
    product = create_product(api, admin, stock=4)
    order_id = orders_of_one_customer[1][0]
    for path, data in [(f"/console/products/{product['id']}/stock", {"delta": "5", "reason": "found"}),
                       (f"/console/products/{product['id']}", {"name": "Renamed", "price": "1.00"}),
                       ("/console/products/new", {"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "New", "price": "1"}),
                       (f"/console/orders/{order_id}/cancel", {}),
                       ("/console/dead-letters/redrive", {}),
                       (f"/console/dead-letters/{uuid.uuid4()}/redrive", {})]:
        assert admin_browser.post(path, data=data).status_code == 400, path
        assert admin_browser.post(path, data={**data, "csrf_token": "forged"}).status_code == 400, path
    after = api.ok("GET", f"/api/inventory/products/{product['id']}")
    assert (after["on_hand"], after["name"]) == (4, product["name"])
    assert api.ok("GET", f"/api/orders/{order_id}", token=admin)["status"] == "rejected"


# -- orders -------------------------------------------------------------------------------
@pytest.mark.parametrize("query, positions", [
    ("", [2, 1, 0]),
    ("&status=rejected", [2, 0]),
    ("&status=rejected&reason=out_of_stock", [0]),
    ("&reason=product_unavailable", [2]),
    ("&status=cancelled", [1]),
    ("&reason=customer", [1]),
    ("&status=fulfilled", []),
])
def test_the_order_filters_are_passed_to_the_search(admin_browser, orders_of_one_customer, query, positions):
    user_id, ids = orders_of_one_customer
    page = text(admin_browser.get(f"/console/orders?q={user_id}{query}"))
    assert rows(page) == [ids[p] for p in positions]


def test_the_date_range_is_of_whole_days_both_inclusive(admin_browser, orders_of_one_customer):
    user_id, ids = orders_of_one_customer
    day = datetime.now(timezone.utc).date()  # the orders were placed just now; the form's days are UTC days
    today, yesterday, tomorrow = (str(day + timedelta(days=n)) for n in (0, -1, 1))
    window = f"created_from={yesterday}&created_to={tomorrow}"
    assert rows(text(admin_browser.get(f"/console/orders?q={user_id}&{window}"))) == ids[::-1]
    assert rows(text(admin_browser.get(f"/console/orders?q={user_id}&created_to={yesterday}"))) == []
    assert rows(text(admin_browser.get(f"/console/orders?q={user_id}&created_from={tomorrow}"))) == []
    response = admin_browser.get(f"/console/orders?q={user_id}&created_from=someday&created_to={today}")
    assert response.status_code == 422 and 'id="created_from-errors"' in text(response)


def test_an_order_id_finds_one_order_and_bad_input_shows_next_to_its_field(admin_browser, orders_of_one_customer):
    _, ids = orders_of_one_customer
    assert rows(text(admin_browser.get(f"/console/orders?q={ids[1]}"))) == [ids[1]]
    assert rows(text(admin_browser.get(f"/console/orders?q={ids[1]}&status=rejected"))) == []
    response = admin_browser.get("/console/orders?q=neither-an-id-nor-an-email")
    assert response.status_code == 422
    page = text(response)
    assert 'id="q-errors"' in page and 'aria-describedby="q-errors"' in page


def test_orders_page_with_a_cursor_keeping_the_filters(admin_browser, rt):
    user_id = uuid.uuid4()
    orders = [new_order(rt, user_id) for _ in range(22)]
    for order in orders:
        cancelled(rt, order)
    ids = [str(o["id"]) for o in orders]
    first = text(admin_browser.get(f"/console/orders?q={user_id}&status=cancelled"))
    assert rows(first) == ids[:1:-1]
    older = re.search(r'<a href="([^"]+)" rel="next">', first).group(1).replace("&amp;", "&")
    assert f"q={user_id}" in older and "status=cancelled" in older and "cursor=" in older
    assert rows(text(admin_browser.get(older))) == ids[1::-1]


def test_an_order_page_shows_lines_and_history_and_cancels_while_allowed(admin_browser, api, admin, database_url):
    product = create_product(api, admin, stock=5, price_cents=2100)
    customer = register(api)["access_token"]
    # The product's row lock keeps a worker from reserving it meanwhile: the order stays pending.
    with product_locked(database_url, product["id"]):
        order = place(api, customer, [(product["id"], 2)])
        path = f"/console/orders/{order['id']}"
        page = text(admin_browser.get(path))
        assert "History" in page and "USD 42.00" in page and 'data-status="pending"' in page
        assert product["name"] in page
        response = admin_browser.post(f"{path}/cancel", data={"csrf_token": CSRF.search(page).group(1)})
        assert response.status_code == 302 and response.headers["Location"] == path
    page = text(admin_browser.get(path))
    assert "The order is cancelled" in page and "Cancel this order" not in page
    assert api.ok("GET", f"/api/orders/{order['id']}", token=customer)["status"] == "cancelled"
    assert admin_browser.get(f"/console/orders/{uuid.uuid4()}").status_code == 404


# -- products -----------------------------------------------------------------------------
def test_products_are_listed_and_searched_as_in_the_shop(admin_browser, product):
    page = text(admin_browser.get("/console/products?q=" + product["sku"]))
    assert rows(page, "product") == [product["id"]] and product["name"] in page


def test_a_stock_adjustment_that_would_make_available_negative_shows_the_409_next_to_the_field(
        admin_browser, api, product):
    path = f"/console/products/{product['id']}"
    csrf = csrf_of_page(admin_browser, path)
    response = admin_browser.post(f"{path}/stock", data={"csrf_token": csrf, "delta": "-5", "reason": "damaged"})
    assert response.status_code == 409
    page = text(response)
    errors = re.search(r'<ul class="errors" id="delta-errors">(.*?)</ul>', page, re.S)
    assert errors and "available now: 1" in errors.group(1)
    assert re.search(r'<input id="delta"[^>]*aria-invalid="true" aria-describedby="delta-errors"', page)
    assert 'value="-5"' in page and 'value="damaged"' in page  # what was typed stays
    assert api.ok("GET", f"/api/inventory/products/{product['id']}")["on_hand"] == 1


def test_a_stock_adjustment_lands_in_the_movements_ledger(admin_browser, api, admin):
    product = create_product(api, admin, stock=2)
    path = f"/console/products/{product['id']}"
    csrf = csrf_of_page(admin_browser, path)
    response = admin_browser.post(f"{path}/stock", data={"csrf_token": csrf, "delta": "3", "reason": "delivery"})
    assert response.status_code == 302
    assert "Stock changed by +3 (delivery): 5 available" in text(admin_browser.get(path))
    ledger = text(admin_browser.get(f"{path}/movements"))
    cells = re.findall(r'<td class="delta [a-z]+">([^<]+)</td>\s*<td>([^<]*)</td>', ledger)
    assert cells == [("+3", "delivery"), ("+2", "initial stock")]
    bad = admin_browser.post(f"{path}/stock", data={"csrf_token": csrf, "delta": "0", "reason": ""})
    assert bad.status_code == 422
    assert 'id="delta-errors"' in text(bad) and 'id="reason-errors"' in text(bad)


def test_a_product_is_created_edited_and_deactivated(admin_browser, api):
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    csrf = csrf_of_page(admin_browser, "/console/products/new")
    form = {"csrf_token": csrf, "sku": sku, "name": "Kettle", "description": "Boils", "price": "19.90",
            "currency": "USD", "stock": "7"}
    response = admin_browser.post("/console/products/new", data=form)
    assert response.status_code == 302
    product_id = response.headers["Location"].rsplit("/", 1)[1]
    created = api.ok("GET", f"/api/inventory/products/{product_id}")
    assert (created["sku"], created["price_cents"], created["on_hand"]) == (sku, 1990, 7)

    again = admin_browser.post("/console/products/new", data=form)
    assert again.status_code == 422 and 'id="sku-errors"' in text(again) and "exists already" in text(again)
    invalid = admin_browser.post("/console/products/new", data={**form, "sku": sku + "x", "price": "1.234",
                                                                "currency": "dollars"})
    assert invalid.status_code == 422 and 'id="price-errors"' in text(invalid)

    edit = {"csrf_token": csrf, "name": "Kettle 2", "description": "Boils fast", "price": "21"}  # no "active": off
    response = admin_browser.post(f"/console/products/{product_id}", data=edit)
    assert response.status_code == 302
    changed = api.ok("GET", f"/api/inventory/products/{product_id}")
    assert (changed["name"], changed["price_cents"], changed["active"]) == ("Kettle 2", 2100, False)
    assert "Inactive" in text(admin_browser.get(f"/console/products/{product_id}"))
    admin_browser.post(f"/console/products/{product_id}", data={**edit, "active": "1"})
    assert api.ok("GET", f"/api/inventory/products/{product_id}")["active"] is True
    refused = admin_browser.post(f"/console/products/{product_id}", data={**edit, "name": ""})
    assert refused.status_code == 422 and 'id="name-errors"' in text(refused)


def test_user_values_are_escaped_on_console_pages(admin_browser, api, admin):
    product = create_product(api, admin, stock=3, name=f"{HOSTILE} {uuid.uuid4().hex[:6]}", description=HOSTILE)
    path = f"/console/products/{product['id']}"
    csrf = csrf_of_page(admin_browser, path)
    admin_browser.post(f"{path}/stock", data={"csrf_token": csrf, "delta": "1", "reason": HOSTILE})
    for page in (text(admin_browser.get("/console/products?q=" + product["sku"])), text(admin_browser.get(path)),
                 text(admin_browser.get(f"{path}/movements")),
                 text(admin_browser.get("/console/orders?q=" + HOSTILE))):
        assert HOSTILE not in page and ESCAPED in page


def test_console_pages_label_every_input_and_carry_no_inline_code(admin_browser, product):
    for path in ("/console/orders", "/console/products", "/console/products/new", f"/console/products/{product['id']}"):
        response = admin_browser.get(path)
        page = text(response)
        assert "<style" not in page and " style=" not in page and "<script>" not in page, path
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
        controls = re.findall(r'<(?:input|select|textarea) (?![^>]*type="hidden")[^>]*>', page)
        assert controls, path
        for control in controls:
            control_id = re.search(r' id="([^"]+)"', control)
            assert control_id and f'for="{control_id.group(1)}"' in page, (path, control)


def test_dashboard_links_show_where_configured(admin_browser, settings, live_gateway):
    assert 'href="http://127.0.0.1:5555/"' in text(admin_browser.get("/console/services"))
    from app import create_app

    plain = create_app("web", replace(settings, gateway_url=live_gateway.url)).test_client()
    for name in ("oms_session", "oms_access", "oms_refresh"):  # the same signed-in browser, another config
        plain.set_cookie(name, admin_browser.get_cookie(name).value)
    page = text(plain.get("/console/services"))
    assert "Flower" not in page and "Grafana" not in page and "Jaeger" not in page


# -- dead letters and the registry ----------------------------------------------------------
def test_a_dead_letter_is_listed_and_redriven(admin_browser, rt, worker):
    event = product_event()
    letter_id = record_dead_letter(rt, event)
    page = text(admin_browser.get("/console/dead-letters"))
    assert letter_id in rows(page, "letter")
    assert "orders.track_product" in page and "RuntimeError: the database said no" in page
    assert "inventory.product_changed" in page and event["id"] in page
    response = admin_browser.post(f"/console/dead-letters/{letter_id}/redrive",
                                  data={"csrf_token": CSRF.search(page).group(1), "state": "open"})
    assert response.status_code == 302 and response.headers["Location"] == "/console/dead-letters?state=open"
    assert "Redrive accepted: 1 message sent again." in text(admin_browser.get("/console/dead-letters"))
    # The worker marks it redriven as it sends it again: the open list drops it then.
    wait_for(lambda: letter_id not in rows(text(admin_browser.get("/console/dead-letters")), "letter"),
             interval=0.3, what="the redriven letter to leave the open list")
    everything = text(admin_browser.get("/console/dead-letters?state=all"))
    assert re.search(rf'<tr id="letter-{letter_id}" data-redriven="yes">', everything)
    again = admin_browser.post(f"/console/dead-letters/{letter_id}/redrive",
                               data={"csrf_token": CSRF.search(page).group(1)}, follow_redirects=True)
    assert "redriven already" in text(again)


def test_without_a_worker_the_dead_letters_page_says_so(settings, stack_env, live_orders, live_notifications,
                                                        own_broker, admin_email):
    """A gateway whose broker no worker reads: the list is a friendly 503, not an error page."""
    from app import create_app
    from tests.conftest import Live

    gateway = Live("gateway", env={**stack_env, "ORDERS_URL": live_orders.url,
                                   "NOTIFICATIONS_URL": live_notifications.url, "CELERY_BROKER_URL": own_broker},
                   WEB_CONCURRENCY="1", GUNICORN_THREADS="4")
    try:
        app = create_app("web", replace(settings, gateway_url=gateway.url, upstream_read_timeout=20.0))
        browser = app.test_client()
        sign_in(browser, admin_email, ADMIN_PASSWORD)
        response = browser.get("/console/dead-letters")
        assert response.status_code == 503 and response.headers["Retry-After"]
        page = text(response)
        assert "No worker answered" in page and ">Retry</a>" in page
        assert 'href="/console/orders">Orders</a>' in page  # the console around it, not a bare error page
    finally:
        gateway.stop()


def test_the_service_registry_shows_each_instance_its_status_and_age(admin_browser):
    page = text(admin_browser.get("/console/services"))
    assert re.search(r"<td>gateway</td>", page) and re.search(r"<td>orders</td>", page)
    assert 'data-status="up"' in page and re.search(r"\d+ (s|min|h|d) ago", page)
