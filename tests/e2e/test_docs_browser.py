"""/api/docs in a real browser (Debian's chromium, driven by Playwright): Swagger UI comes from
the gateway itself, lists the operations of the merged document, and works with no
internet and under the page's Content-Security-Policy (no request leaves for another
host, nothing is refused by the policy, no script error)."""
from __future__ import annotations

from urllib.parse import urlsplit

from tests.browser import LOCAL_HOSTS, browser  # noqa: F401 (a fixture)


def test_the_docs_page_lists_the_operations_offline_under_its_csp(live_gateway, browser):
    context = browser.new_context()
    page = context.new_page()
    requested, refused_hosts, console_errors, page_errors = [], [], [], []

    def only_local(route):
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:  # what a machine without internet would do, and a request this page must not make
            refused_hosts.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
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
    finally:
        context.close()
    assert not refused_hosts, refused_hosts
    assert all(urlsplit(url).hostname in LOCAL_HOSTS for url in requested if url.startswith("http")), requested
    assert any(url.endswith("/api/openapi.json") for url in requested)
    assert not page_errors, page_errors
    assert not console_errors, console_errors  # a CSP refusal is a console error


def test_docs_assets_are_the_installed_files_and_nothing_else(live_gateway):
    from tests.support import Api

    api = Api(live_gateway.url)
    status, headers, _ = api.call("GET", "/api/docs/swagger-ui-bundle.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for name in ("index.html", "..%2Fviews.py", "swagger-initializer.js", "oauth2-redirect.html"):
        status, headers, _ = api.call("GET", f"/api/docs/{name}")
        assert status in (400, 404) and headers["Content-Type"] == "application/problem+json", name
