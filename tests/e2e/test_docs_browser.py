"""/api/docs in a real browser (Debian's chromium, driven by Playwright): Swagger UI comes from
the gateway itself, lists the operations of the merged document, and works with no
internet and under the page's Content-Security-Policy (no request leaves for another
host, nothing is refused by the policy, no script error)."""
from __future__ import annotations

from urllib.parse import urlsplit

from tests.browser import LOCAL_HOSTS, browser, offline_page  # noqa: F401 (a fixture)


def test_the_docs_page_lists_the_operations_offline_under_its_csp(live_gateway, browser):
    requested = []
    with offline_page(browser) as page:
        page.on("request", lambda request: requested.append(request.url))
        response = page.goto(live_gateway.url + "/api/docs", wait_until="load")
        assert response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        page.wait_for_selector(".opblock", timeout=30_000)
        listed = page.eval_on_selector_all(
            ".opblock-summary",
            "blocks => blocks.map(b => b.querySelector('.opblock-summary-method').textContent + ' '"
            " + b.querySelector('.opblock-summary-path').getAttribute('data-path'))",
        )
        for operation in ("POST /api/orders", "GET /api/orders/{order_id}", "POST /api/users",
                          "POST /api/auth/login", "GET /api/inventory/products", "GET /api/notifications",
                          "POST /api/inventory/products/{product_id}/stock", "GET /api/services"):
            assert operation in listed, (operation, listed)
        assert page.title() == "oms API"
    assert all(urlsplit(url).hostname in LOCAL_HOSTS for url in requested if url.startswith("http")), requested
    assert any(url.endswith("/api/openapi.json") for url in requested)


def test_docs_assets_are_the_installed_files_and_nothing_else(live_gateway):
    from tests.support import Api

    api = Api(live_gateway.url)
    status, headers, _ = api.call("GET", "/api/docs/swagger-ui-bundle.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for name in ("index.html", "..%2Fviews.py", "swagger-initializer.js", "oauth2-redirect.html"):
        status, headers, _ = api.call("GET", f"/api/docs/{name}")
        assert status in (400, 404) and headers["Content-Type"] == "application/problem+json", name
