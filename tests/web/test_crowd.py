"""A crowd at the front door: many visitors at once browse the storefront through the gateway,
whose threads wait on the web console while the console's own API calls go back through the
gateway. Every page is answered whole, none with a 5xx, and the gateway's breaker for the
console stays closed."""
from __future__ import annotations

import re
import threading
import uuid
from collections import Counter

import pytest
import urllib3

from tests.conftest import start_web_stack
from tests.support import Api, create_product, new_email

GATEWAY_THREADS = 8  # live_web's gateway: one gunicorn worker of 8 threads
VISITORS = 4 * GATEWAY_THREADS
PAGES_EACH = 6


def test_four_times_the_gateways_threads_of_concurrent_visitors_get_every_page_whole(live_web, admin):
    api = Api(live_web.url)
    product = create_product(api, admin, stock=5, name=f"Crowd {uuid.uuid4().hex[:6]}")
    pages = ["/", f"/products/{product['id']}", "/?q=crowd", "/login"]
    statuses: Counter = Counter()
    incomplete: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(VISITORS)

    def visit(n: int) -> None:
        http = urllib3.PoolManager(maxsize=1, timeout=urllib3.Timeout(connect=5, read=60), retries=False)
        start.wait()
        for i in range(PAGES_EACH):
            path = pages[(n + i) % len(pages)]
            try:
                response = http.request("GET", live_web.url + path)
            except urllib3.exceptions.HTTPError as exc:
                with lock:
                    statuses[type(exc).__name__] += 1
                continue
            body = response.data.decode("utf-8", "replace")
            with lock:
                statuses[response.status] += 1
                if response.status == 200 and not body.rstrip().endswith("</html>"):
                    incomplete.append(path)

    visitors = [threading.Thread(target=visit, args=(n,)) for n in range(VISITORS)]
    for visitor in visitors:
        visitor.start()
    for visitor in visitors:
        visitor.join(300)
    assert statuses == Counter({200: VISITORS * PAGES_EACH}), (statuses, live_web.gateway.log()[-3000:])
    assert not incomplete
    # The console's breaker never opened: a page after the crowd is served at once.
    status, _, _ = api.call("GET", "/")
    assert status == 200


@pytest.fixture(scope="module")
def limited_web(stack_env, live_orders, live_notifications):
    """A gateway with small limits in front of a web console of its own."""
    stack = start_web_stack(stack_env, live_orders, live_notifications, RATE_LIMIT_PAGES="15/minute",
                            RATE_LIMIT_DEFAULT="40/minute")
    yield stack
    stack.stop()


def _from(address: str) -> urllib3.PoolManager:
    return urllib3.PoolManager(source_address=(address, 0), retries=False, timeout=20)


def test_a_visitor_over_its_own_limit_gets_429_and_a_visitor_elsewhere_is_served_and_signs_up(limited_web):
    """Each visitor has buckets of its own, for pages and for the API calls the console makes
    for it: one client's page views use up neither another's pages nor the catalog reads."""
    greedy, other = _from("127.0.0.1"), _from("127.0.0.2")
    statuses = [greedy.request("GET", limited_web.url + "/").status for _ in range(20)]
    assert statuses[:15] == [200] * 15 and set(statuses[15:]) == {429}, statuses
    refused = greedy.request("GET", limited_web.url + "/login")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert greedy.request("GET", limited_web.url + "/static/web.css").status == 200  # not counted

    page = other.request("GET", limited_web.url + "/")
    assert page.status == 200 and "Catalog" in page.data.decode()
    form = other.request("GET", limited_web.url + "/register")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.data.decode()).group(1)
    cookie = form.headers["Set-Cookie"].split(";", 1)[0]
    signed_up = other.request("POST", limited_web.url + "/register", redirect=False, headers={"Cookie": cookie},
                              fields={"csrf_token": csrf, "name": "Ada", "email": new_email(),
                                      "password": "long enough"}, encode_multipart=False)
    assert signed_up.status == 302, signed_up.data[:500]


def test_the_console_passes_on_the_browsers_address_so_the_api_limit_is_per_browser(limited_web):
    """The catalog page reads the API for its visitor: with the API's budget spent by one
    browser, that browser sees the console's 429 page while another still gets the catalog."""
    api_budget = 40
    spender, bystander = _from("127.0.0.3"), _from("127.0.0.4")
    for _ in range(api_budget):
        spender.request("GET", limited_web.url + "/api/inventory/products?limit=1")
    assert spender.request("GET", limited_web.url + "/api/inventory/products?limit=1").status == 429
    page = spender.request("GET", limited_web.url + "/")
    assert page.status == 429 and "Too many requests" in page.data.decode()
    assert bystander.request("GET", limited_web.url + "/").status == 200
