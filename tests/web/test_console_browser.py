"""The operations console in a real browser (Debian's chromium, driven by Playwright) against
the live stack: an admin signs in, adjusts a product's stock with a reason and finds the row
in the product's stock movements, then finds a message that dead-lettered and redrives it.
No request leaves the machine; nothing is refused by the Content-Security-Policy. The last
page is saved as a screenshot.
"""
from __future__ import annotations

import re
import uuid

import pytest

from tests.support import Api, admin_token, create_product, new_email, wait_for
from tests.browser import browser, offline_page  # noqa: F401 (a fixture)

PASSWORD = "admin password"


@pytest.fixture(scope="module")
def worker(stack_env, live_orders):
    """A worker of this module's own (dead letters are read by one), stopped after it: other
    modules count on orders staying pending while no worker runs."""
    from tests.conftest import Worker

    started = Worker({**stack_env, "ORDERS_URL": live_orders.url})
    yield started
    started.stop()


def poison(marker: str) -> None:
    """A message inventory.reserve cannot take (no order in it): it dead-letters at once.

    On a connection of its own: an in-process test worker elsewhere in the session closes
    the Celery app's shared pool."""
    from workers.celery_app import app as celery

    with celery.connection_for_write() as connection:
        celery.send_task("inventory.reserve", queue="inventory", connection=connection,
                         args=[{"id": marker, "type": "order.placed", "payload": {"order": str(uuid.uuid4())}}])


def test_an_admin_adjusts_stock_sees_the_ledger_and_redrives_a_dead_letter(live_web, worker, browser):  # noqa: F811
    from services.users import service

    api = Api(live_web.url)
    tag = uuid.uuid4().hex[:8]
    product = create_product(api, admin_token(api), name=f"Shelf {tag}", stock=6)
    email = new_email()
    service.create_admin(email=email, password=PASSWORD)

    with offline_page(browser, width=1200, screenshot="console-dead-letters.png") as page:
        page.set_default_timeout(15_000)
        page.goto(live_web.url + "/login?next=/console/")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(live_web.url + "/console/orders")
        assert page.get_by_role("link", name="Console").is_visible()

        # Products: find the product, adjust its stock with a reason.
        page.get_by_role("navigation", name="Console").get_by_role("link", name="Products").click()
        page.get_by_label("Search by name or SKU").fill(tag)
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(rf".*q={tag}.*"))
        page.get_by_role("link", name=product["name"]).click()
        page.wait_for_url(re.compile(r".*/console/products/[0-9a-f-]{36}$"))
        page.get_by_label("Change").fill("-4")
        page.get_by_label("Reason").fill(f"damaged in transit {tag}")
        page.get_by_role("button", name="Adjust stock").click()
        page.get_by_text("Stock changed by -4").wait_for()
        assert page.locator('[data-field="available"]').inner_text() == "2"

        page.get_by_role("link", name="Stock movements").click()
        newest = page.locator("table.movements tbody tr").first
        assert newest.locator("td").nth(1).inner_text() == "-4"
        assert newest.locator("td").nth(2).inner_text() == f"damaged in transit {tag}"
        assert page.locator("table.movements tbody tr").count() == 2  # and the initial stock

        # Dead letters: a poisoned message shows up; redriving it takes it off the open list.
        marker = f"poison-{tag}"
        poison(marker)
        page.get_by_role("navigation", name="Console").get_by_role("link", name="Dead letters").click()
        row = page.locator("table.dead-letters tbody tr", has_text=marker).first

        def listed():
            if row.count():
                return True
            page.reload()
            return False

        wait_for(listed, timeout=40, interval=0.5, what="the dead letter in the console")
        letter = row.get_attribute("id")
        assert "inventory.reserve" in row.inner_text() and "inventory" in row.inner_text()
        row.get_by_role("button", name=re.compile("^Redrive")).click()
        page.get_by_text("Redrive accepted: 1 message sent again.").wait_for()
        # The worker marks it redriven as it sends it again: the open list drops it then.
        def gone():
            if page.locator(f"#{letter}").count() == 0:
                return True
            page.reload()
            return False

        wait_for(gone, timeout=20, interval=0.5, what="the redriven letter to leave the open list")
        page.get_by_role("link", name="All", exact=True).click()
        page.wait_for_url(re.compile(r".*state=all"))
        assert page.locator(f'#{letter}[data-redriven="yes"]').count() == 1

