"""Login sessions: an absolute lifetime, logout-all, revocation on password or role changes,
the account's current state at every refresh, and revocation failing closed.

Each API test runs through the gateway and straight to the users service's port.
"""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import jwt as pyjwt
import pytest

from tests.conftest import PYTHON, ROOT, Live, free_port
from tests.support import Api, new_email

PASSWORD = "correct horse"
PROBLEM = "application/problem+json"


@pytest.fixture(params=["gateway", "users"])
def api(request):
    server = request.getfixturevalue("live_gateway" if request.param == "gateway" else "live_users")
    return Api(server.url)


def register(api: Api, email: str | None = None) -> dict:
    return api.ok("POST", "/api/users", 201,
                  json_body={"email": email or new_email(), "name": "Session", "password": PASSWORD})


def login(api: Api, email: str, password: str = PASSWORD) -> dict:
    return api.ok("POST", "/api/auth/login", json_body={"email": email, "password": password})


def claims(token: str) -> dict:
    return pyjwt.decode(token, options={"verify_signature": False})


def assert_401(api: Api, method: str, path: str, token: str):
    status, headers, body = api.call(method, path, token=token)
    assert status == 401, (status, body)
    assert headers["Content-Type"].startswith(PROBLEM) and headers["WWW-Authenticate"].startswith("Bearer")


def works(api: Api, pair: dict) -> bool:
    return api.call("GET", "/api/users/me", token=pair["access_token"])[0] == 200


# -- logout-all ------------------------------------------------------------------------
def test_logout_all_ends_every_session_of_the_caller_and_only_theirs(api):
    first = register(api)
    sessions = [first] + [login(api, first["email"]) for _ in range(2)]
    bystander = register(api)
    assert all(works(api, s) for s in sessions)
    status, _, body = api.call("POST", "/api/auth/logout-all", token=sessions[1]["access_token"])
    assert status == 204 and body is None
    for session in sessions:
        assert_401(api, "GET", "/api/users/me", session["access_token"])
        assert_401(api, "POST", "/api/auth/refresh", session["refresh_token"])
    assert works(api, bystander)
    fresh = login(api, first["email"])  # the account itself is fine: a new login works
    assert works(api, fresh)
    assert api.call("POST", "/api/auth/refresh", token=fresh["refresh_token"])[0] == 200


def test_logout_all_takes_an_access_token(api):
    user = register(api)
    assert_401(api, "POST", "/api/auth/logout-all", None)
    assert_401(api, "POST", "/api/auth/logout-all", user["refresh_token"])
    assert works(api, user)


def test_revocation_holds_on_every_service_s_own_port(live_users, live_orders, live_notifications, live_inventory):
    users, orders, notifications = Api(live_users.url), Api(live_orders.url), Api(live_notifications.url)
    user = register(users)
    token = user["access_token"]
    assert orders.call("GET", "/api/orders", token=token)[0] == 200
    assert notifications.call("GET", "/api/notifications", token=token)[0] == 200
    assert users.call("POST", "/api/auth/logout-all", token=token)[0] == 204
    assert_401(orders, "GET", "/api/orders", token)
    assert_401(notifications, "GET", "/api/notifications", token)
    assert_401(Api(live_inventory.url), "POST", "/api/inventory/products", token)


# -- password and role changes ------------------------------------------------------------
def test_create_admin_on_an_existing_account_ends_its_sessions(api, rt):
    from services.users import service

    user = register(api)
    other = login(api, user["email"])
    service.create_admin(email=user["email"], password="a brand new password")
    for session in (user, other):
        assert_401(api, "GET", "/api/users/me", session["access_token"])
        assert_401(api, "POST", "/api/auth/refresh", session["refresh_token"])
    status, _, _ = api.call("POST", "/api/auth/login", json_body={"email": user["email"], "password": PASSWORD})
    assert status == 401
    admin = login(api, user["email"], "a brand new password")
    assert claims(admin["access_token"])["role"] == "admin" and works(api, admin)


def test_the_create_admin_command_ends_the_sessions_of_the_account_it_changes(live_users, base_env):
    api = Api(live_users.url)
    user = register(api)
    result = subprocess.run([PYTHON, "-m", "app", "create-admin", "--email", user["email"]], cwd=ROOT,
                            env={**base_env, "ADMIN_PASSWORD": "the admin password", "LOG_LEVEL": "INFO"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert user["id"] in result.stdout + result.stderr  # the account is named by its id...
    assert user["email"].lower() not in (result.stdout + result.stderr).lower()  # ...never its email
    assert_401(api, "GET", "/api/users/me", user["access_token"])
    assert_401(api, "POST", "/api/auth/refresh", user["refresh_token"])
    assert claims(login(api, user["email"], "the admin password")["access_token"])["role"] == "admin"


# -- refresh reads the account ---------------------------------------------------------------
def _sql(rt, sql: str, *args):
    async def run(db):
        return await db.execute(sql, *args)

    rt.db.run(run, rt.db.manager("users"))


def test_refresh_takes_the_role_from_the_account_not_the_old_token(api, rt):
    user = register(api)
    assert claims(user["refresh_token"])["role"] == "customer"
    # A change made in the database (an operator's fix), not through the service.
    _sql(rt, "UPDATE {{tables.users}} SET role = 'admin' WHERE id = $1", uuid.UUID(user["id"]))
    status, _, pair = api.call("POST", "/api/auth/refresh", token=user["refresh_token"])
    assert status == 200
    assert claims(pair["access_token"])["role"] == "admin" and claims(pair["refresh_token"])["role"] == "admin"


def test_refresh_for_an_account_that_no_longer_exists_is_401(api, rt):
    user = register(api)
    _sql(rt, "DELETE FROM {{tables.users}} WHERE id = $1", uuid.UUID(user["id"]))
    assert_401(api, "POST", "/api/auth/refresh", user["refresh_token"])


# -- absolute lifetime -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_sessions(rt, base_env):
    server = Live("users", base_env, SESSION_MAX_AGE_SECONDS="4", WEB_CONCURRENCY="1")
    yield Api(server.url)
    server.stop()


def test_a_session_ends_its_max_age_after_login_whatever_the_rotations(short_sessions):
    api = short_sessions
    started = int(time.time())
    user = register(api)
    end = claims(user["refresh_token"])["exp"]
    assert started + 3 <= end <= int(time.time()) + 4
    assert claims(user["access_token"])["exp"] <= end and user["expires_in"] <= 4
    pair = user
    for _ in range(2):
        time.sleep(1)
        status, _, pair = api.call("POST", "/api/auth/refresh", token=pair["refresh_token"])
        assert status == 200
        # The rotated token ends with the session: no fresh lifetime.
        assert claims(pair["refresh_token"])["exp"] == end
        assert claims(pair["access_token"])["exp"] <= end
        assert pair["expires_in"] <= end - int(time.time()) + 1
    time.sleep(max(0.0, end - time.time()) + 1.1)
    assert_401(api, "POST", "/api/auth/refresh", pair["refresh_token"])
    assert_401(api, "GET", "/api/users/me", pair["access_token"])
    assert works(api, login(api, user["email"]))  # a new login is a new session


def test_the_default_session_lasts_thirty_days_and_refresh_tokens_the_idle_lifetime(live_users, settings):
    api = Api(live_users.url)
    now = int(time.time())
    user = register(api)
    refresh = claims(user["refresh_token"])
    assert refresh["exp"] - now in range(settings.refresh_token_ttl - 2, settings.refresh_token_ttl + 3)
    assert settings.session_max_age_seconds == 30 * 24 * 3600


# -- the revocation store unreachable ---------------------------------------------------------
def _without_redis(base_env, **env):
    return Live("users", {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, WEB_CONCURRENCY="1", **env)


def test_revocation_fails_closed_while_redis_is_unreachable(live_users, base_env):
    user = register(Api(live_users.url))
    down = _without_redis(base_env)
    try:
        status, headers, body = Api(down.url).call("GET", "/api/users/me", token=user["access_token"])
        assert status == 503 and headers["Content-Type"].startswith(PROBLEM) and int(headers["Retry-After"]) >= 1
        assert body["status"] == 503 and "redis" not in json.dumps(body).lower()
    finally:
        down.stop()


def test_the_fail_open_switch_accepts_signed_unexpired_tokens_while_redis_is_unreachable(live_users, base_env):
    user = register(Api(live_users.url))
    down = _without_redis(base_env, AUTH_REVOCATION_FAIL_OPEN="true")
    try:
        assert Api(down.url).call("GET", "/api/users/me", token=user["access_token"])[0] == 200
        status, _, _ = Api(down.url).call("POST", "/api/auth/logout-all", token=user["access_token"])
        assert status == 503  # revoking needs the store: never a 204 that did not happen
    finally:
        down.stop()
