"""The storefront's views (Flask test client) against the session's real gateway and services:
who may see what, CSRF, cookie flags, the Content-Security-Policy, escaping, token refresh,
the cart and an idempotent checkout. Nothing is mocked: the web app calls the live gateway.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import replace
from http.cookies import SimpleCookie

import pytest

from tests.support import Api, create_product, new_email, place, product_locked, register

PASSWORD = "long enough"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def web_app(settings, live_gateway):
    from app import create_app

    return create_app("web", replace(settings, gateway_url=live_gateway.url))


@pytest.fixture
def browser(web_app):
    return web_app.test_client()


@pytest.fixture(scope="module")
def api(live_gateway):
    return Api(live_gateway.url)


@pytest.fixture(scope="module")
def product(api, admin):
    return create_product(api, admin, stock=50, name=f"Lamp {uuid.uuid4().hex[:6]}")


def csrf_of(browser, path: str = "/login") -> str:
    page = browser.get(path)
    return CSRF.search(page.get_data(as_text=True)).group(1)


def sign_up(browser, *, name: str = "Ada", email: str | None = None) -> str:
    email = email or new_email()
    response = browser.post("/register", data={"csrf_token": csrf_of(browser, "/register"), "name": name,
                                               "email": email, "password": PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)
    return email


def set_cookies(response) -> dict[str, dict]:
    """name -> {value, flags} of every Set-Cookie header."""
    found = {}
    for header in response.headers.getlist("Set-Cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name, morsel in cookie.items():
            found[name] = {"value": morsel.value, "header": header.lower()}
    return found


def token_of(browser) -> str:
    return browser.get_cookie("oms_access").value


# -- who may see what ---------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/cart", "/checkout", "/orders", "/notifications",
                                  f"/orders/{uuid.uuid4()}", f"/orders/{uuid.uuid4()}/status"])
def test_anonymous_visitors_are_sent_to_sign_in(browser, path):
    response = browser.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_an_htmx_request_of_an_anonymous_visitor_is_told_to_go_to_sign_in(browser):
    response = browser.get("/orders", headers={"HX-Request": "true"})
    assert response.status_code == 204 and response.headers["HX-Redirect"].startswith("/login")


def test_the_catalog_and_a_product_page_are_public(browser, product):
    page = browser.get("/?q=" + product["sku"])
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert product["name"] in page.get_data(as_text=True)
    detail = browser.get(f"/products/{product['id']}")
    assert detail.status_code == 200 and "Available: 50" in detail.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/products/not-a-uuid", f"/products/{uuid.uuid4()}", "/no-such-page"])
def test_unknown_pages_are_a_404_page(browser, path):
    response = browser.get(path)
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_a_customer_cannot_see_another_customers_order(browser, api, product):
    owner = register(api)["access_token"]
    order = place(api, owner, [(product["id"], 1)])
    sign_up(browser)
    for path in (f"/orders/{order['id']}", f"/orders/{order['id']}/status"):
        assert browser.get(path).status_code == 404, path
    csrf = csrf_of(browser, "/orders")
    assert browser.post(f"/orders/{order['id']}/cancel", data={"csrf_token": csrf}).status_code == 404
    assert api.ok("GET", f"/api/orders/{order['id']}", token=owner)["status"] != "cancelled"


# -- CSRF ---------------------------------------------------------------------------------
def test_a_form_without_its_csrf_token_is_refused(browser, product):
    response = browser.post("/login", data={"email": new_email(), "password": PASSWORD})
    assert response.status_code == 400
    sign_up(browser)
    for path, data in [("/cart/add", {"product_id": product["id"], "quantity": "1"}), ("/logout", {}),
                       ("/checkout", {"key": str(uuid.uuid4())})]:
        assert browser.post(path, data=data).status_code == 400, path
        assert browser.post(path, data={**data, "csrf_token": "forged"}).status_code == 400, path
    assert browser.get("/cart").status_code == 200  # still signed in, nothing added
    assert "Your cart is empty" in browser.get("/cart").get_data(as_text=True)


def test_htmx_requests_carry_the_csrf_token_in_a_header(browser, product):
    sign_up(browser)
    page = browser.get("/").get_data(as_text=True)
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page).group(1)
    response = browser.post("/cart/add", data={"product_id": product["id"], "quantity": "2"},
                            headers={"X-CSRFToken": token})
    assert response.status_code == 302
    assert product["name"] in browser.get("/cart").get_data(as_text=True)


# -- cookies ------------------------------------------------------------------------------
def test_tokens_live_in_httponly_samesite_lax_cookies_secure_outside_development(web_app, settings, live_gateway):
    from app import create_app

    for app_env, secure in (("production", True), ("development", False)):
        app = create_app("web", replace(settings, gateway_url=live_gateway.url, app_env=app_env))
        browser = app.test_client()
        email = new_email()
        response = browser.post("/register", data={"csrf_token": csrf_of(browser, "/register"), "name": "Ada",
                                                   "email": email, "password": PASSWORD})
        cookies = set_cookies(response)
        assert {"oms_access", "oms_refresh", "oms_session"} <= set(cookies)
        for name in ("oms_access", "oms_refresh", "oms_session"):
            header = cookies[name]["header"]
            assert "httponly" in header and "samesite=lax" in header, header
            assert ("; secure" in header) is secure, (app_env, header)


def test_an_expired_access_token_is_refreshed_transparently(browser, api):
    sign_up(browser)
    old_refresh = browser.get_cookie("oms_refresh").value
    browser.set_cookie("oms_access", "expired-or-garbage")
    response = browser.get("/orders")
    assert response.status_code == 200
    cookies = set_cookies(response)
    assert cookies["oms_refresh"]["value"] != old_refresh
    assert api.ok("GET", "/api/users/me", token=cookies["oms_access"]["value"])
    # The old refresh token was rotated away: reusing it is refused.
    assert api.call("POST", "/api/auth/refresh", token=old_refresh)[0] == 401


def test_a_session_whose_tokens_stopped_working_goes_back_to_sign_in(browser):
    sign_up(browser)
    browser.set_cookie("oms_access", "garbage")
    browser.set_cookie("oms_refresh", "garbage")
    response = browser.get("/orders")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert set_cookies(response)["oms_access"]["value"] == ""


def test_logout_ends_the_session_at_the_api_and_clears_both_cookies(browser, api):
    sign_up(browser)
    access = token_of(browser)
    response = browser.post("/logout", data={"csrf_token": csrf_of(browser, "/")})
    assert response.status_code == 302
    cookies = set_cookies(response)
    assert cookies["oms_access"]["value"] == "" and cookies["oms_refresh"]["value"] == ""
    assert api.call("GET", "/api/users/me", token=access)[0] == 401
    assert browser.get("/orders").status_code == 302


# -- the page itself ----------------------------------------------------------------------
def test_every_page_has_a_csp_without_inline_scripts_or_styles(browser):
    for path in ("/", "/login", "/register", "/no-such-page"):
        response = browser.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        body = response.get_data(as_text=True)
        assert "<style" not in body and " style=" not in body, path
        assert all(re.search(r'src="[^"]+"', tag) for tag in re.findall(r"<script[^>]*>", body)), path
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_user_values_are_escaped(browser, api, admin):
    hostile = "<script>alert(1)</script>"
    product = create_product(api, admin, name=f"{hostile} {uuid.uuid4().hex[:6]}")
    page = browser.get("/?q=" + product["sku"]).get_data(as_text=True)
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    sign_up(browser, name=hostile)
    page = browser.get("/").get_data(as_text=True)
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_form_errors_from_the_api_show_next_to_their_fields(browser):
    response = browser.post("/register", data={"csrf_token": csrf_of(browser, "/register"), "name": "Ada",
                                               "email": "not an email", "password": "short"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="email-errors"' in page and 'id="password-errors"' in page
    assert 'aria-describedby="password-errors"' in page
    response = browser.post("/login", data={"csrf_token": csrf_of(browser), "email": new_email(),
                                            "password": PASSWORD})
    assert response.status_code == 422 and "Wrong email or password" in response.get_data(as_text=True)


def test_every_input_has_a_label(browser, product):
    sign_up(browser)
    browser.post("/cart/add", data={"csrf_token": csrf_of(browser, "/"), "product_id": product["id"],
                                    "quantity": "1"})
    for path in ("/", "/login", "/register", "/cart", f"/products/{product['id']}"):
        page = browser.get(path).get_data(as_text=True)
        ids = re.findall(r'<input (?![^>]*type="hidden")[^>]*id="([^"]+)"', page)
        unlabelled = [i for i in re.findall(r'<input (?![^>]*type="hidden")[^>]*>', page) if ' id="' not in i]
        assert not unlabelled, (path, unlabelled)
        for input_id in ids:
            assert f'for="{input_id}"' in page, (path, input_id)


# -- cart and checkout --------------------------------------------------------------------
def test_the_cart_is_kept_per_user_on_the_server(web_app, browser, product):
    email = sign_up(browser)
    browser.post("/cart/add", data={"csrf_token": csrf_of(browser, "/"), "product_id": product["id"],
                                    "quantity": "3"})
    other = web_app.test_client()  # another device: signs in, finds the same cart
    other.post("/login", data={"csrf_token": csrf_of(other), "email": email, "password": PASSWORD})
    page = other.get("/cart").get_data(as_text=True)
    assert product["name"] in page and 'value="3"' in page


def test_checkout_places_one_order_however_often_its_form_is_sent(browser, api, product):
    sign_up(browser)
    browser.post("/cart/add", data={"csrf_token": csrf_of(browser, "/"), "product_id": product["id"],
                                    "quantity": "2"})
    page = browser.get("/checkout").get_data(as_text=True)
    key = re.search(r'name="key" value="([^"]+)"', page).group(1)
    assert key in browser.get("/checkout").get_data(as_text=True), "a reload keeps the key"
    form = {"csrf_token": CSRF.search(page).group(1), "key": key}
    first, second = browser.post("/checkout", data=form), browser.post("/checkout", data=form)
    assert first.status_code == second.status_code == 302
    assert first.headers["Location"] == second.headers["Location"]
    orders = api.ok("GET", "/api/orders", token=token_of(browser))["items"]
    assert len(orders) == 1 and orders[0]["items"][0]["quantity"] == 2
    assert "Your cart is empty" in browser.get("/cart").get_data(as_text=True)


def test_a_cart_changed_after_the_checkout_page_asks_for_another_look(browser, api, product):
    sign_up(browser)
    csrf = csrf_of(browser, "/")
    browser.post("/cart/add", data={"csrf_token": csrf, "product_id": product["id"], "quantity": "1"})
    key = re.search(r'name="key" value="([^"]+)"', browser.get("/checkout").get_data(as_text=True)).group(1)
    browser.post("/cart/add", data={"csrf_token": csrf, "product_id": product["id"], "quantity": "1"})
    response = browser.post("/checkout", data={"csrf_token": csrf, "key": key})
    assert response.status_code == 302 and response.headers["Location"] == "/checkout"
    assert api.ok("GET", "/api/orders", token=token_of(browser))["items"] == []


def test_an_order_page_shows_lines_history_and_cancels_while_allowed(browser, api, product, database_url):
    sign_up(browser)
    # The product's row is locked: a worker of the session, if one runs, cannot reserve the
    # order, so it stays pending (cancellable) for as long as the test looks at it.
    with product_locked(database_url, product["id"]):
        order = place(api, token_of(browser), [(product["id"], 1)])
        page = browser.get(f"/orders/{order['id']}").get_data(as_text=True)
        assert product["name"] in page and "History" in page and 'hx-trigger="every 1s"' in page
        response = browser.post(f"/orders/{order['id']}/cancel", data={"csrf_token": CSRF.search(page).group(1)})
    assert response.status_code == 302
    fragment = browser.get(f"/orders/{order['id']}/status").get_data(as_text=True)
    assert 'data-status="cancelled"' in fragment and "hx-trigger" not in fragment, "terminal: polling stops"
    assert api.ok("GET", f"/api/orders/{order['id']}", token=token_of(browser))["status"] == "cancelled"


def test_my_notifications_page_is_the_customers_own(browser):
    sign_up(browser)
    response = browser.get("/notifications")
    assert response.status_code == 200 and "My notifications" in response.get_data(as_text=True)
