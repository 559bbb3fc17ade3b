"""The storefront against hostile and unlucky visitors: where it sends a browser after sign-in,
what a cart may hold, what a copied session cookie still reaches after sign-out, and a late
request with a refresh token that has just rotated. Flask test client against the session's
live gateway and services."""
from __future__ import annotations

import uuid

import pytest

from tests.support import create_product, new_email
from tests.web.test_views import PASSWORD, api, browser, csrf_of, product, sign_up, web_app  # noqa: F401 (fixtures)


# -- where sign-in sends the browser ------------------------------------------------------
@pytest.mark.parametrize("target", [
    "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "//evil.example", "/\\evil.example",
    "\\\\evil.example", "https://evil.example/", "javascript:alert(1)", "/%09/evil.example",
    "/%2F/evil.example", "%2F%2Fevil.example", "/%5Cevil.example", "/\x00/x", "evil.example", " //evil.example",
    "/\x7f/evil.example", "http:/evil.example",
])
def test_a_next_that_leaves_the_site_goes_to_the_home_page(browser, target):
    email = sign_up(browser)
    browser.post("/logout", data={"csrf_token": csrf_of(browser, "/")})
    response = browser.post("/login", data={"csrf_token": csrf_of(browser), "email": email, "password": PASSWORD,
                                            "next": target})
    assert response.status_code == 302 and response.headers["Location"] == "/", target
    signed_up = browser.post("/register", data={"csrf_token": csrf_of(browser, "/register"), "name": "Ada",
                                                "email": new_email(), "password": PASSWORD, "next": target})
    assert signed_up.status_code == 302 and signed_up.headers["Location"] == "/", target


@pytest.mark.parametrize("target", ["/orders", "/products/x?y=1", "/cart#top", "/%7Euser"])
def test_a_next_on_this_site_is_followed(browser, target):
    email = sign_up(browser)
    browser.post("/logout", data={"csrf_token": csrf_of(browser, "/")})
    response = browser.post("/login", data={"csrf_token": csrf_of(browser), "email": email, "password": PASSWORD,
                                            "next": target})
    assert response.status_code == 302 and response.headers["Location"] == target


# -- what a cart may hold -----------------------------------------------------------------
def _cart_ids(browser) -> set[str]:
    import re

    return set(re.findall(r'name="product_id" value="([^"]+)"', browser.get("/cart").get_data(as_text=True)))


def test_the_cart_update_form_adds_no_product_that_does_not_exist_or_is_not_sold(browser, api, admin):
    sign_up(browser)
    csrf = csrf_of(browser, "/")
    retired = create_product(api, admin, stock=3)
    api.ok("PATCH", f"/api/inventory/products/{retired['id']}", json_body={"active": False}, token=admin)
    for product_id in (str(uuid.uuid4()), str(uuid.uuid4()), retired["id"]):
        response = browser.post("/cart/update", data={"csrf_token": csrf, "product_id": product_id, "quantity": "2"})
        assert response.status_code == 404, product_id
    assert _cart_ids(browser) == set()


def test_no_path_takes_a_cart_past_its_cap_and_the_refusal_shows_next_to_the_field(browser, api, admin):
    from app.web.cart import MAX_LINES

    sign_up(browser)
    csrf = csrf_of(browser, "/")
    products = [create_product(api, admin, stock=5) for _ in range(MAX_LINES + 1)]
    for found in products[:MAX_LINES]:
        assert browser.post("/cart/add", data={"csrf_token": csrf, "product_id": found["id"],
                                               "quantity": "1"}).status_code == 302
    extra = products[MAX_LINES]["id"]
    added = browser.post("/cart/add", data={"csrf_token": csrf, "product_id": extra, "quantity": "1",
                                            "next": f"/products/{extra}"})
    assert added.status_code == 422
    page = added.get_data(as_text=True)
    assert f"at most {MAX_LINES} different products" in page and 'aria-describedby="quantity-errors"' in page
    updated = browser.post("/cart/update", data={"csrf_token": csrf, "product_id": extra, "quantity": "1"})
    assert updated.status_code == 422 and f"at most {MAX_LINES} different products" in updated.get_data(as_text=True)
    assert len(_cart_ids(browser)) == MAX_LINES and extra not in _cart_ids(browser)
    # A line already in the cart can still change.
    first = products[0]["id"]
    assert browser.post("/cart/update", data={"csrf_token": csrf, "product_id": first,
                                              "quantity": "4"}).status_code == 302
    assert 'value="4"' in browser.get("/cart").get_data(as_text=True)


def test_a_quantity_out_of_range_is_shown_next_to_the_field(browser, product):
    sign_up(browser)
    response = browser.post("/cart/add", data={"csrf_token": csrf_of(browser, "/"), "product_id": product["id"],
                                               "quantity": "1001", "next": f"/products/{product['id']}"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Choose a quantity from 1 to 1000" in page and 'aria-describedby="quantity-errors"' in page


# -- a copied session after sign-out ------------------------------------------------------
COOKIES = ("oms_session", "oms_access", "oms_refresh")


def _copy_of(web_app, browser):
    """Another browser holding copies of this one's cookies (a stolen or backed-up cookie jar)."""
    thief = web_app.test_client()
    for name in COOKIES:
        cookie = browser.get_cookie(name)
        if cookie is not None:
            thief.set_cookie(name, cookie.value)
    return thief


def _reaches_nothing(thief, product) -> None:
    for path in ("/cart", "/checkout", "/orders", "/notifications"):
        response = thief.get(path)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login"), path
    csrf = csrf_of(thief, "/")
    added = thief.post("/cart/add", data={"csrf_token": csrf, "product_id": product["id"], "quantity": "1"})
    assert added.status_code == 302 and added.headers["Location"].startswith("/login")
    updated = thief.post("/cart/update", data={"csrf_token": csrf, "product_id": product["id"], "quantity": "9"})
    assert updated.status_code == 302 and updated.headers["Location"].startswith("/login")
    assert 'class="count"' not in thief.get("/").get_data(as_text=True)  # not even the cart's count


def test_after_sign_out_a_copied_session_cookie_reaches_nothing(web_app, browser, product):
    email = sign_up(browser)
    csrf = csrf_of(browser, "/")
    browser.post("/cart/add", data={"csrf_token": csrf, "product_id": product["id"], "quantity": "2"})
    thief = _copy_of(web_app, browser)
    assert thief.get("/cart").status_code == 200  # while the session lives, the copy works
    browser.post("/logout", data={"csrf_token": csrf})
    _reaches_nothing(thief, product)
    # The owner signs in again and finds the cart as it was.
    owner = web_app.test_client()
    owner.post("/login", data={"csrf_token": csrf_of(owner), "email": email, "password": PASSWORD})
    assert 'value="2"' in owner.get("/cart").get_data(as_text=True)


def test_after_sign_out_everywhere_on_another_device_the_session_cookie_reaches_nothing(web_app, browser, api,
                                                                                         product):
    email = sign_up(browser)
    other = web_app.test_client()
    other.post("/login", data={"csrf_token": csrf_of(other), "email": email, "password": PASSWORD})
    token = other.get_cookie("oms_access").value
    assert api.call("POST", "/api/auth/logout-all", token=token)[0] == 204
    _reaches_nothing(browser, product)


# -- a late request with the refresh token that has just rotated --------------------------
def _web_redis(settings):
    import redis

    return redis.Redis.from_url(settings.redis_url)


def _late_copy(web_app, browser):
    """This browser's cookies as a request sent before the rotation still carries them."""
    late = _copy_of(web_app, browser)
    late.set_cookie("oms_access", "expired-or-garbage")
    return late


def test_a_late_request_with_the_old_refresh_cookie_gets_the_new_pair_and_the_session_lives(web_app, browser, api,
                                                                                          settings):
    from app.web.client import refresh_keys

    sign_up(browser)
    old_refresh = browser.get_cookie("oms_refresh").value
    browser.set_cookie("oms_access", "expired-or-garbage")
    late = _late_copy(web_app, browser)
    assert browser.get("/orders").status_code == 200  # rotated here
    pair_key, lock_key, used_key = refresh_keys(old_refresh)
    redis = _web_redis(settings)
    # Kept encrypted, for no longer than late requests need it.
    sealed = redis.get(pair_key)
    assert sealed and browser.get_cookie("oms_access").value.encode() not in sealed
    assert 0 < redis.ttl(pair_key) <= 60 and redis.ttl(used_key) > 60
    redis.delete(lock_key)  # as if the request came after the lock had expired
    response = late.get("/orders")
    assert response.status_code == 200
    assert late.get_cookie("oms_refresh").value == browser.get_cookie("oms_refresh").value
    assert api.call("GET", "/api/users/me", token=browser.get_cookie("oms_access").value)[0] == 200


def test_a_very_late_request_is_asked_to_sign_in_and_neither_ends_the_session_nor_drops_the_new_cookies(
        web_app, browser, api, settings):
    from app.web.client import refresh_keys

    sign_up(browser)
    old_refresh = browser.get_cookie("oms_refresh").value
    browser.set_cookie("oms_access", "expired-or-garbage")
    late = _late_copy(web_app, browser)
    assert browser.get("/orders").status_code == 200
    pair_key, lock_key, _ = refresh_keys(old_refresh)
    _web_redis(settings).delete(pair_key, lock_key)  # as if a minute had gone by
    response = late.get("/orders")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert not [h for h in response.headers.getlist("Set-Cookie") if h.startswith(("oms_access=", "oms_refresh="))]
    # The session lives: the browser's newer pair still works, and rotates as it should.
    new_refresh = browser.get_cookie("oms_refresh").value
    assert api.call("GET", "/api/users/me", token=browser.get_cookie("oms_access").value)[0] == 200
    assert api.call("POST", "/api/auth/refresh", token=new_refresh)[0] == 200
