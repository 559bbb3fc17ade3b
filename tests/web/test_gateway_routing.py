"""The gateway serves the web console at / (pages, static files, form posts, cookies) while
/api/... and its operations paths stay its own."""
from __future__ import annotations

import re

import pytest

from tests.support import Api, new_email


@pytest.fixture(scope="module")
def site(live_web):
    return Api(live_web.url)


def test_the_storefront_and_its_static_files_come_through_the_gateway(site):
    status, headers, _ = site.call("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, _ = site.call("GET", "/static/htmx.min.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    status, headers, _ = site.call("GET", "/static/web.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")


def test_api_and_operations_paths_stay_the_gateways(site):
    status, headers, body = site.call("GET", "/api")
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    status, headers, body = site.call("GET", "/api/no-such-thing")
    assert status in (401, 404) and headers["Content-Type"] == "application/problem+json"
    status, _, body = site.call("GET", "/health")
    assert status == 200 and body["service"] == "gateway"
    status, _, body = site.call("GET", "/api/inventory/products")
    assert status == 200 and "items" in body



@pytest.mark.parametrize("path", ["/static/../app/web/client.py", "/static/%2e%2e/client.py", "//static/web.css"])
def test_the_console_is_no_way_around_the_gateways_path_rules(live_web, path):
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    url = urlsplit(live_web.url)
    connection = HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", path)  # sent as written: http.client normalises nothing
        assert connection.getresponse().status == 400
    finally:
        connection.close()


def test_a_form_post_and_its_cookies_go_through(site):
    page = site.http.request("GET", site.base + "/register")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.data.decode()).group(1)
    session = page.headers["Set-Cookie"].split(";", 1)[0]
    response = site.http.request(
        "POST", site.base + "/register", redirect=False, headers={"Cookie": session},
        fields={"csrf_token": csrf, "name": "Ada", "email": new_email(), "password": "long enough"},
        encode_multipart=False)
    assert response.status == 302, response.data[:500]
    names = {c.split("=", 1)[0] for c in response.headers.getlist("Set-Cookie")}
    assert {"oms_access", "oms_refresh", "oms_session"} <= names


def test_methods_the_console_does_not_take_are_405(site):
    status, headers, _ = site.call("DELETE", "/")
    assert status == 405 and "GET" in headers["Allow"]
