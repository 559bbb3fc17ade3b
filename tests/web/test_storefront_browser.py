"""The storefront in a real browser (Debian's chromium, driven by Playwright) against the
live stack: gateway, services, a Celery worker and the web process. A customer registers,
searches, puts two products in the cart, double-clicks "Place order", watches the one
order become fulfilled on "My orders" without reloading (htmx polling), and finds its
mail under "Notifications". No request leaves the machine; nothing is refused by the
page's Content-Security-Policy. The last page is saved as a screenshot.
"""
from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser import browser, offline_page  # noqa: F401 (a fixture)
from tests.support import Api, admin_token, create_product, wait_for


@pytest.fixture(scope="module")
def slow_fulfilment_worker(stack_env, live_orders):
    """A worker that fulfils two seconds after reserving, so "My orders" shows the order before it
    is fulfilled. (Another worker of the session may take the order first: the test allows that.)"""
    from tests.conftest import Worker

    worker = Worker({**stack_env, "ORDERS_URL": live_orders.url}, FULFILMENT_DELAY_SECONDS="2")
    yield worker
    worker.stop()


def test_a_customer_shops_checks_out_once_and_watches_the_order_get_fulfilled(
        live_web, slow_fulfilment_worker, browser):
    api = Api(live_web.url)
    tag = uuid.uuid4().hex[:8]
    admin = admin_token(api)
    lamp = create_product(api, admin, name=f"Desk lamp {tag}", stock=20, price_cents=3450)
    mug = create_product(api, admin, name=f"Tea mug {tag}", stock=20, price_cents=1200)

    navigations, polls = [], []
    with offline_page(browser, width=1100, screenshot="storefront-notifications.png") as page:
        page.set_default_timeout(15_000)
        page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
        page.on("request", lambda request: polls.append(request.url) if "/status" in request.url else None)
        # Register: the account is signed in at once.
        page.goto(live_web.url + "/register")
        page.get_by_label("Name").fill("Ada Lovelace")
        email = f"ada-{tag}@example.com"
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill("correct horse")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url(live_web.url + "/")
        assert page.get_by_text("Ada Lovelace").is_visible()

        # Search (htmx swaps the results in and keeps the address in step).
        page.get_by_label("Search by name or SKU").fill(tag)
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(rf".*q={tag}.*"))
        cards = page.locator(".card")
        cards.nth(1).wait_for()
        assert cards.count() == 2

        for product in (lamp, mug):
            page.get_by_role("button", name=f"Add {product['name']} to cart").click()
            page.wait_for_load_state()
            assert page.get_by_text(f"to your cart").first.is_visible()
        page.get_by_role("link", name=re.compile("^Cart")).click()
        assert page.get_by_role("link", name=lamp["name"]).is_visible()
        assert page.get_by_role("link", name=mug["name"]).is_visible()
        page.get_by_role("link", name="Checkout").click()
        page.wait_for_url(live_web.url + "/checkout")

        # A double click on the button: one order.
        page.locator("#place-order").dblclick()
        # The second submit may abort the first one's navigation: poll the address instead
        # of waiting for one navigation.
        expect(page).to_have_url(re.compile(r".*/orders/[0-9a-f-]{36}$"), timeout=15_000)
        order_id = page.url.rsplit("/", 1)[1]

        page.get_by_role("link", name="My orders", exact=True).click()
        page.wait_for_url(live_web.url + "/orders")
        rows = page.locator("table.orders tbody tr")
        assert rows.count() == 1
        status = page.locator(f"#status-{order_id}")
        first_seen = status.get_attribute("data-status")
        arrived = len(navigations)
        page.wait_for_selector(f'#status-{order_id}[data-status="fulfilled"]', timeout=30_000)
        assert len(navigations) == arrived, f"the page was reloaded: {navigations[arrived:]}"
        if first_seen != "fulfilled":
            assert any(order_id in url for url in polls), "the status came by htmx polling"
        print(f"order first shown as {first_seen!r}, then fulfilled after {len(polls)} polls, no reload")

        # Exactly one order for this customer, through the API too.
        token = api.ok("POST", "/api/auth/login", json_body={"email": email, "password": "correct horse"})[
            "access_token"]
        orders = api.ok("GET", "/api/orders", token=token)["items"]
        assert [o["id"] for o in orders] == [order_id] and orders[0]["status"] == "fulfilled"
        assert sorted((i["product_id"], i["quantity"]) for i in orders[0]["items"]) == sorted(
            [(lamp["id"], 1), (mug["id"], 1)])

        # The order's mail is listed under "Notifications".
        def mail_listed():
            page.get_by_role("link", name="Notifications", exact=True).click()
            page.wait_for_url(live_web.url + "/notifications")
            return page.get_by_text(re.compile(rf"Order {order_id[:8]} .*on its way")).count() > 0

        wait_for(mail_listed, timeout=30, interval=0.5, what="the order's mail in my notifications")
