"""The "Users and auth" part of api.md and its error conventions, from outside.

Each test runs twice: through the gateway and straight to the users service's
port - both must give the same answers.
"""
from __future__ import annotations

import base64
import json
import time
import uuid

import jwt as pyjwt
import pytest

from tests.support import Api

PROBLEM = "application/problem+json"


@pytest.fixture(params=["gateway", "users"])
def api(request):
    server = request.getfixturevalue("live_gateway" if request.param == "gateway" else "live_users")
    return Api(server.url)


def email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@Example.com"


def register(api, address=None, password="correct horse", **extra):
    status, headers, body = api.call(
        "POST", "/api/users", json_body={"email": address or email(), "name": "Ada", "password": password, **extra}
    )
    assert status == 201, body
    return body


def assert_problem(status, headers, body, expected, *fields):
    assert status == expected, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == expected
    text = json.dumps(body).lower()
    for leak in ("traceback", "asyncpg", "select ", "insert ", "pgdbm", ".py"):
        assert leak not in text
    for field in fields:
        assert field in body.get("errors", {}), body
    if expected == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")


# -- registration and login --------------------------------------------------------
def test_registration_answers_the_profile_and_tokens(api):
    address = email()
    status, headers, body = api.call(
        "POST", "/api/users", json_body={"email": address, "name": "Ada", "password": "correct horse"}
    )
    assert status == 201
    assert {"id", "email", "name", "role", "created_at", "access_token", "refresh_token", "token_type", "expires_in"} <= set(body)
    assert uuid.UUID(body["id"]) and body["email"] == address and body["role"] == "customer"
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert "password" not in body and "password_hash" not in body
    assert body["created_at"].endswith("+00:00") or body["created_at"].endswith("Z")


def test_a_duplicate_email_in_any_case_is_a_conflict(api):
    address = email()
    register(api, address)
    assert_problem(*api.call("POST", "/api/users", json_body={"email": address.upper(), "name": "B", "password": "another pass"}), 409)


@pytest.mark.parametrize(
    "body, fields",
    [
        ({"email": "not-an-email", "name": "A", "password": "long enough"}, ["email"]),
        ({"email": "a@b.io", "name": "A", "password": "short"}, ["password"]),
        ({"email": "a@b.io", "password": "long enough"}, ["name"]),
        ({"email": "a@b.io", "name": "A", "password": "long enough", "admin": True}, ["admin"]),
        ({"email": 5, "name": ["x"], "password": None}, ["email", "name", "password"]),
    ],
)
def test_an_invalid_registration_names_each_wrong_field(api, body, fields):
    assert_problem(*api.call("POST", "/api/users", json_body=body), 422, *fields)


def test_a_body_that_is_not_an_object_is_a_validation_error(api):
    assert_problem(*api.call("POST", "/api/users", json_body=["a", "list"]), 422)


def test_malformed_json_is_400(api):
    assert_problem(*api.call("POST", "/api/users", body=b'{"email": ', headers={"Content-Type": "application/json"}), 400)


def test_a_body_that_is_not_json_is_415(api):
    assert_problem(*api.call("POST", "/api/users", body=b"email=a", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)


def test_a_body_over_one_mebibyte_is_413(api):
    big = json.dumps({"email": "a@b.io", "name": "x" * (1024 * 1024 + 10), "password": "long enough"}).encode()
    assert_problem(*api.call("POST", "/api/users", body=big, headers={"Content-Type": "application/json"}), 413)


def test_login_gives_a_token_pair(api):
    address = email()
    register(api, address)
    status, _, body = api.call("POST", "/api/auth/login", json_body={"email": address.lower(), "password": "correct horse"})
    assert status == 200
    assert {"access_token", "refresh_token", "token_type", "expires_in"} <= set(body)


def test_wrong_password_and_unknown_email_get_the_same_401(api):
    address = email()
    register(api, address)
    s1, h1, wrong_password = api.call("POST", "/api/auth/login", json_body={"email": address, "password": "not it at all"})
    s2, h2, unknown_email = api.call("POST", "/api/auth/login", json_body={"email": email(), "password": "not it at all"})
    assert_problem(s1, h1, wrong_password, 401)
    assert_problem(s2, h2, unknown_email, 401)
    assert wrong_password == unknown_email


# -- profile -----------------------------------------------------------------------
def test_me_shows_and_updates_the_profile(api):
    user = register(api)
    status, _, me = api.call("GET", "/api/users/me", token=user["access_token"])
    assert status == 200
    assert {"id", "email", "name", "role", "phone", "created_at", "updated_at"} <= set(me)
    assert me["id"] == user["id"] and me["phone"] is None
    status, _, patched = api.call("PATCH", "/api/users/me", token=user["access_token"], json_body={"name": "Grace", "phone": "+14155550123"})
    assert status == 200
    assert patched["name"] == "Grace" and patched["phone"] == "+14155550123"
    assert patched["updated_at"] >= me["updated_at"]


def test_an_invalid_profile_patch_names_the_field(api):
    user = register(api)
    assert_problem(*api.call("PATCH", "/api/users/me", token=user["access_token"], json_body={"phone": "call me"}), 422, "phone")
    assert_problem(*api.call("PATCH", "/api/users/me", token=user["access_token"], json_body={"role": "admin"}), 422, "role")


# -- tokens ------------------------------------------------------------------------
def test_refresh_rotates_and_a_reused_refresh_token_is_refused(api):
    user = register(api)
    status, _, pair = api.call("POST", "/api/auth/refresh", token=user["refresh_token"])
    assert status == 200 and pair["refresh_token"] != user["refresh_token"]
    assert api.call("GET", "/api/users/me", token=pair["access_token"])[0] == 200
    assert_problem(*api.call("POST", "/api/auth/refresh", token=user["refresh_token"]), 401)
    # Reuse means the token leaked: the whole session ends, the rotated pair included.
    assert_problem(*api.call("POST", "/api/auth/refresh", token=pair["refresh_token"]), 401)
    assert_problem(*api.call("GET", "/api/users/me", token=pair["access_token"]), 401)


def test_logout_revokes_the_access_token_and_its_refresh_token(api):
    user = register(api)
    other_session = api.call("POST", "/api/auth/login", json_body={"email": user["email"], "password": "correct horse"})[2]
    status, _, _ = api.call("POST", "/api/auth/logout", token=user["access_token"])
    assert status == 204
    assert_problem(*api.call("GET", "/api/users/me", token=user["access_token"]), 401)
    assert_problem(*api.call("POST", "/api/auth/refresh", token=user["refresh_token"]), 401)
    # Another login of the same user is another session and keeps working.
    assert api.call("GET", "/api/users/me", token=other_session["access_token"])[0] == 200


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict:
    return pyjwt.decode(token, options={"verify_signature": False})


def _tokens(api, settings):
    user = register(api)
    return user, _claims(user["access_token"]), str(settings.jwt_secret_key)


def test_missing_or_malformed_authorization_is_401(api):
    assert_problem(*api.call("GET", "/api/users/me"), 401)
    assert_problem(*api.call("GET", "/api/users/me", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert_problem(*api.call("GET", "/api/users/me", headers={"Authorization": "Bearer"}), 401)
    assert_problem(*api.call("GET", "/api/users/me", token="not.a.jwt"), 401)


def test_a_tampered_token_is_401(api, settings):
    user, claims, _ = _tokens(api, settings)
    header, _, signature = user["access_token"].split(".")
    forged = ".".join([header, _b64({**claims, "role": "admin"}), signature])
    assert_problem(*api.call("GET", "/api/users/me", token=forged), 401)


def test_a_token_signed_with_another_key_is_401(api, settings):
    _, claims, _ = _tokens(api, settings)
    assert_problem(*api.call("GET", "/api/users/me", token=pyjwt.encode(claims, "x" * 64, algorithm="HS256")), 401)


def test_an_alg_none_token_is_401(api, settings):
    _, claims, _ = _tokens(api, settings)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert_problem(*api.call("GET", "/api/users/me", token=unsigned), 401)


def test_an_expired_token_is_401(api, settings):
    _, claims, secret = _tokens(api, settings)
    past = int(time.time()) - 3600
    expired = pyjwt.encode({**claims, "iat": past - 60, "nbf": past - 60, "exp": past}, secret, algorithm="HS256")
    assert_problem(*api.call("GET", "/api/users/me", token=expired), 401)


def test_a_refresh_token_is_not_an_access_token_and_vice_versa(api, settings):
    user, _, _ = _tokens(api, settings)
    assert_problem(*api.call("GET", "/api/users/me", token=user["refresh_token"]), 401)
    assert_problem(*api.call("POST", "/api/auth/refresh", token=user["access_token"]), 401)


def test_a_valid_token_for_a_deleted_session_family_is_401(api, settings):
    _, claims, secret = _tokens(api, settings)
    no_family = {k: v for k, v in claims.items() if k != "fam"}
    assert_problem(*api.call("GET", "/api/users/me", token=pyjwt.encode(no_family, secret, algorithm="HS256")), 401)


# -- conventions -------------------------------------------------------------------
def test_unknown_paths_are_404_problems(api):
    # Under a protected prefix the gateway asks for a token first; with one, both say 404.
    user = register(api)
    assert_problem(*api.call("GET", "/api/users/nobody/here", token=user["access_token"]), 404)
    assert_problem(*api.call("GET", "/api/nothing-here"), 404)


def test_request_ids_are_echoed_or_generated(api):
    status, headers, _ = api.call("GET", "/health", headers={"X-Request-ID": "abc-123"})
    assert status == 200 and headers["X-Request-ID"] == "abc-123"
    assert len(api.call("GET", "/health")[1]["X-Request-ID"]) >= 16


def test_operations_endpoints(api):
    assert api.call("GET", "/health")[2]["status"] == "ok"
    status, _, ready = api.call("GET", "/ready")
    assert status == 200 and ready["checks"]["postgres"] == "ok"
    r = api.http.request("GET", api.base + "/metrics")
    assert r.status == 200 and b"http_requests_total" in r.data
