"""Login throttling in the users service itself: per (account, client), and per account
across the clients it has not logged in from.

After LOGIN_FAILURES_BEFORE_DELAY failed logins for one account from one client, that
client is refused with a 429 problem and Retry-After for a delay that doubles with each
further failure up to LOGIN_DELAY_MAX_SECONDS; a successful login starts the count again.
Other clients are not held up by it. From LOGIN_ACCOUNT_FAILURES_MAX failures on the
account (a run from many addresses), each further failure locks the account for
LOGIN_ACCOUNT_DELAY_SECONDS, never longer, for every client but the ones it has logged in from.
"""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import urllib3

from tests.conftest import Live, free_port
from tests.support import Api, new_email

PASSWORD = "correct horse"
PROBLEM = "application/problem+json"


class From:
    """HTTP from a loopback address of our choosing (127.0.0.0/8 is all ours), as another client."""

    def __init__(self, url: str, source: str):
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.pool = urllib3.HTTPConnectionPool(host, int(port), source_address=(source, 0), retries=False)

    def login(self, email: str, password: str):
        r = self.pool.request("POST", "/api/auth/login", body=json.dumps({"email": email, "password": password}),
                              headers={"Content-Type": "application/json"})
        return r.status, r.headers, json.loads(r.data) if r.data else None


def make_user(api: Api) -> str:
    email = new_email()
    api.ok("POST", "/api/users", 201, json_body={"email": email, "name": "Throttled", "password": PASSWORD})
    return email


def assert_throttled(status, headers, body, retry_after: int | None = None):
    assert status == 429, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == 429 and {"type", "title", "detail"} <= set(body)
    assert int(headers["Retry-After"]) >= 1
    if retry_after is not None:
        assert int(headers["Retry-After"]) == retry_after


@pytest.fixture(scope="module")
def throttled(rt, base_env):
    """A users service with a short schedule: 3 failures, then 1 s, 2 s, 2 s (the cap)..."""
    server = Live("users", base_env, LOGIN_FAILURES_BEFORE_DELAY="3", LOGIN_DELAY_SECONDS="1",
                  LOGIN_DELAY_MAX_SECONDS="2", LOGIN_ACCOUNT_FAILURES_MAX="6", LOGIN_ACCOUNT_DELAY_SECONDS="2",
                  WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
    yield server
    server.stop()


# -- the schedule ----------------------------------------------------------------
def test_one_clients_failures_hold_up_that_client_and_not_the_owner_elsewhere(throttled):
    email = make_user(Api(throttled.url))
    guesser, owner = From(throttled.url, "127.0.0.20"), From(throttled.url, "127.0.0.21")
    for _ in range(3):
        assert guesser.login(email, "wrong password")[0] == 401
    assert_throttled(*guesser.login(email, PASSWORD), retry_after=1)  # even with the right password
    assert owner.login(email, PASSWORD)[0] == 200


def test_a_run_from_many_addresses_slows_the_account_for_a_while_but_never_its_known_clients(throttled):
    email = make_user(Api(throttled.url))
    owner = From(throttled.url, "127.0.0.30")
    assert owner.login(email, PASSWORD)[0] == 200  # the account knows this client now
    sprayers = [From(throttled.url, f"127.0.1.{i}") for i in range(1, 8)]
    for sprayer in sprayers[:6]:  # one guess each: no client over its own threshold
        assert sprayer.login(email, "wrong password")[0] == 401
    # The account's ceiling: a new client waits, however right its password, for the delay at most.
    status, headers, body = sprayers[6].login(email, PASSWORD)
    assert_throttled(status, headers, body)
    assert int(headers["Retry-After"]) <= 2
    assert owner.login(email, PASSWORD)[0] == 200  # the owner's known client goes on
    time.sleep(2.1)
    assert sprayers[6].login(email, PASSWORD)[0] == 200  # locked for the delay, no longer


def test_the_delay_doubles_with_each_further_failure_up_to_its_cap(throttled):
    email = make_user(Api(throttled.url))
    client = From(throttled.url, "127.0.0.9")
    for _ in range(3):
        assert client.login(email, "wrong password")[0] == 401
    assert_throttled(*client.login(email, "wrong password"), retry_after=1)
    time.sleep(1.1)
    assert client.login(email, "wrong password")[0] == 401  # allowed again, and failed again
    assert_throttled(*client.login(email, PASSWORD), retry_after=2)
    time.sleep(2.1)
    assert client.login(email, "wrong password")[0] == 401
    assert_throttled(*client.login(email, PASSWORD), retry_after=2)  # capped, not 4


def test_a_successful_login_starts_the_count_again(throttled):
    email = make_user(Api(throttled.url))
    client = From(throttled.url, "127.0.0.10")
    for _ in range(2):
        assert client.login(email, "wrong password")[0] == 401
    assert client.login(email, PASSWORD)[0] == 200
    for _ in range(3):  # without the reset the third of these would already be refused
        assert client.login(email, "wrong password")[0] == 401
    assert_throttled(*client.login(email, PASSWORD), retry_after=1)
    time.sleep(1.1)
    assert client.login(email, PASSWORD)[0] == 200  # after the wait, and it resets again
    for _ in range(3):
        assert client.login(email, "wrong password")[0] == 401
    assert_throttled(*client.login(email, "wrong password"), retry_after=1)


def test_an_unknown_email_is_throttled_exactly_like_a_known_one(throttled):
    known, unknown = make_user(Api(throttled.url)), new_email()
    client = From(throttled.url, "127.0.0.11")
    answers = {}
    for email in (known, unknown):
        for _ in range(3):
            assert client.login(email, "wrong password")[0] == 401
        status, headers, body = client.login(email, "wrong password")
        assert_throttled(status, headers, body, retry_after=1)
        answers[email] = body
    assert answers[known] == answers[unknown]  # nothing says whether the account exists


def test_the_throttle_keys_the_account_not_the_spelling_of_its_email(throttled):
    email = make_user(Api(throttled.url))
    client = From(throttled.url, "127.0.0.12")
    for spelling in (email.upper(), email.lower(), email.swapcase()):
        assert client.login(spelling, "wrong password")[0] == 401
    assert_throttled(*client.login(email, PASSWORD))


# -- concurrency -------------------------------------------------------------------
def test_concurrent_guesses_get_no_more_password_checks_than_the_thresholds(live_users):
    """Default schedule (5 failures per client, then 2 s; 20 per account): a burst from one
    client or from many cannot slip past the counts."""
    email = make_user(Api(live_users.url))
    one = From(live_users.url, "127.0.0.40")
    with ThreadPoolExecutor(15) as pool:
        statuses = sorted(s for s, _, _ in pool.map(lambda _: one.login(email, "wrong password"), range(15)))
    assert statuses.count(401) == 5 and statuses.count(429) == 10, statuses
    email = make_user(Api(live_users.url))
    clients = [From(live_users.url, f"127.0.2.{i}") for i in range(1, 31)]
    with ThreadPoolExecutor(15) as pool:
        statuses = sorted(s for s, _, _ in pool.map(lambda c: c.login(email, "wrong password"), clients))
    assert statuses.count(401) == 20 and statuses.count(429) == 10, statuses


# -- through the gateway --------------------------------------------------------------
def test_through_the_gateway_the_service_throttles_each_client_it_sees_past_the_gateway(live_gateway):
    """The gateway limits per email and address (10 a minute) and passes the client's address on;
    the users service, trusting the gateway's hop, holds up the guessing client only."""
    email = make_user(Api(live_gateway.url))
    guesser, owner = From(live_gateway.url, "127.0.0.50"), From(live_gateway.url, "127.0.0.51")
    for _ in range(5):
        assert guesser.login(email, "wrong password")[0] == 401
    status, headers, body = guesser.login(email, PASSWORD)
    assert_throttled(status, headers, body)
    # flask-limiter at the gateway raises Retry-After to its own window's reset, never lowers it.
    assert int(headers["Retry-After"]) >= 2
    assert owner.login(email, PASSWORD)[0] == 200


# -- Redis unreachable --------------------------------------------------------------------
def test_with_redis_unreachable_login_fails_closed_outside_development(rt, base_env, live_users):
    email = make_user(Api(live_users.url))
    down = Live("users", {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, WEB_CONCURRENCY="1")
    try:
        status, headers, body = Api(down.url).call("POST", "/api/auth/login",
                                                   json_body={"email": email, "password": PASSWORD})
        assert status == 503 and headers["Content-Type"].startswith(PROBLEM) and int(headers["Retry-After"]) >= 1
        assert "redis" not in json.dumps(body).lower()
    finally:
        down.stop()


def test_the_throttle_follows_the_revocation_fail_open_switch_when_redis_is_down():
    from infra.errors import Unavailable
    from services.users.throttle import LoginThrottle

    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5,
                                decode_responses=True)
    policy = dict(threshold=3, delay=1, max_delay=2, window=60)
    account = f"user:{uuid.uuid4()}"
    with pytest.raises(Unavailable):
        LoginThrottle(dead, fail_open=False, **policy).admit(account=account)
    LoginThrottle(dead, fail_open=True, **policy).admit(account=account)  # admitted, with a warning
    LoginThrottle(dead, fail_open=True, **policy).succeeded(account=account)


def test_the_delay_schedule():
    from services.users.throttle import delay_after

    schedule = [delay_after(failures=n, threshold=3, delay=2, max_delay=900) for n in range(1, 14)]
    assert schedule == [0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
