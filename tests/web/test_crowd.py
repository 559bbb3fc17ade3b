"""A crowd at the front door: many visitors at once browse the storefront through the gateway,
whose threads wait on the web console while the console's own API calls go back through the
gateway. Every page is answered whole, none with a 5xx, and the gateway's breaker for the
console stays closed."""
from __future__ import annotations

import threading
import uuid
from collections import Counter

import urllib3

from tests.support import Api, create_product

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
