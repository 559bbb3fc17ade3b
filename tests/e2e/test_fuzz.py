"""Schemathesis against the whole stack through the gateway, as a customer and as an admin,
with all its checks: no server error, no response the document does not allow, every
constraint the document states enforced. Failures listed in tests/fuzz-baseline.yml
(check, operation, reason) are knowingly accepted; anything else fails the test.

Schemathesis runs here as its CLI does (its engine: examples, coverage and fuzzing
phases, and the stateful phase in the full profile), in this process so the baseline
can be applied per check and operation. Its pytest plugin is not used: it does not run
under pytest 9.

FUZZ_PROFILE=ci (the default, in `make test`): deterministic, bounded in examples and
time. `make fuzz` runs FUZZ_PROFILE=full: random, many more examples, stateful phase; on
a stack of its own, or against FUZZ_URL with an admin named by FUZZ_ADMIN_EMAIL and
FUZZ_ADMIN_PASSWORD (that stack needs high RATE_LIMIT_DEFAULT and RATE_LIMIT_LOGIN).
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import Live
from tests.support import Api, new_email

BASELINE = Path(__file__).resolve().parent.parent / "fuzz-baseline.yml"
PROFILES = {
    "ci": {"max_examples": 10, "max_time": 60, "deterministic": True, "stateful": False, "shrink": False},
    "full": {"max_examples": 150, "max_time": 600, "deterministic": False, "stateful": True, "shrink": True},
}
PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
# Operations that end the session of the token they are sent: each call gets a throwaway user's.
SESSION_ENDING = {"/api/auth/logout", "/api/auth/logout-all", "/api/auth/refresh"}
PASSWORD = "fuzz password 1"
LIMITLESS = "1000000/minute"


def profile() -> dict:
    chosen = dict(PROFILES[PROFILE])
    for name in ("max_examples", "max_time"):
        value = os.environ.get(f"FUZZ_{name.upper()}")
        if value:
            chosen[name] = int(value)
    return chosen


@dataclass
class Finding:
    check: str
    operation: str
    title: str
    reproduce: str


def load_baseline() -> list[dict]:
    entries = yaml.safe_load(BASELINE.read_text()) or []
    for entry in entries:
        assert set(entry) <= {"check", "operation", "identity", "request", "reason"}, entry
        assert str(entry.get("reason", "")).strip(), f"a baseline entry needs a reason: {entry}"
    return entries


def baselined(entries: list[dict], finding: Finding, identity: str) -> dict | None:
    for entry in entries:
        if (entry["check"] == finding.check and entry["operation"] in (finding.operation, "*")
                and entry.get("identity", identity) == identity
                and re.search(entry.get("request", ""), finding.reproduce)):
            return entry
    return None


@dataclass
class Identity:
    """A user the fuzzer acts as; logs in again well before its access token could expire."""

    api: Api
    email: str
    password: str
    token: str = ""
    at: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bearer(self) -> str:
        with self.lock:
            if time.monotonic() - self.at > 300:
                self.token = patient(self.api, "POST", "/api/auth/login", 200,
                                     json_body={"email": self.email, "password": self.password})["access_token"]
                self.at = time.monotonic()
            return self.token


def patient(api: Api, method: str, path: str, expected: int, *, budget: float = 180.0, **kwargs) -> dict:
    """The fuzzer's own setup calls, waiting out a rate limit (a stack run with its default
    limits, ``FUZZ_URL``) as a well-behaved client does: after ``Retry-After``."""
    deadline = time.monotonic() + budget
    while True:
        status, headers, data = api.call(method, path, **kwargs)
        if status != 429 or time.monotonic() > deadline:
            assert status == expected, (method, path, status, data)
            return data
        time.sleep(min(float(headers.get("Retry-After") or 1), 30.0))


@dataclass
class Target:
    url: str
    identities: dict[str, Identity]

    def throwaway(self, *, refresh: bool) -> str:
        body = patient(Api(self.url), "POST", "/api/users", 201,
                       json_body={"email": new_email(), "name": "Fuzz throwaway", "password": PASSWORD})
        return body["refresh_token" if refresh else "access_token"]


@pytest.fixture(scope="module")
def fuzz_target(request) -> Target:
    url = os.environ.get("FUZZ_URL", "").rstrip("/")
    if url:
        email, password = os.environ.get("FUZZ_ADMIN_EMAIL"), os.environ.get("FUZZ_ADMIN_PASSWORD")
        assert email and password, "FUZZ_URL needs FUZZ_ADMIN_EMAIL and FUZZ_ADMIN_PASSWORD (an admin of that stack)"
    else:
        # A gateway of its own in front of the session's services: the same code, with limits a
        # fuzzer does not reach (a 429 is a documented answer, and would hide everything behind it).
        stack_env = request.getfixturevalue("stack_env")
        orders, notifications = request.getfixturevalue("live_orders"), request.getfixturevalue("live_notifications")
        request.getfixturevalue("live_worker")  # the whole system: the dead-letter list is read by a worker
        gateway = Live("gateway", {**stack_env, "ORDERS_URL": orders.url, "NOTIFICATIONS_URL": notifications.url},
                       RATE_LIMIT_DEFAULT=LIMITLESS, RATE_LIMIT_LOGIN=LIMITLESS,
                       WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
        request.addfinalizer(gateway.stop)
        url = gateway.url
        from services.users import service

        email, password = new_email(), PASSWORD
        service.create_admin(email=email, password=password)
    api = Api(url)
    customer = new_email()
    api.ok("POST", "/api/users", 201, json_body={"email": customer, "name": "Fuzz customer", "password": PASSWORD})
    return Target(url, {"admin": Identity(api, email, password), "customer": Identity(api, customer, PASSWORD)})


def fuzz(target: Target, identity: str) -> tuple[list[Finding], list[str], str]:
    """Run schemathesis's engine as ``identity``: (check failures, errors, a summary of what it sent)."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
    from schemathesis.engine import Status, events, from_schema

    chosen = profile()
    config = SchemathesisConfig.from_dict({
        "checks": {
            "enabled": True,
            # A request line over gunicorn's 4094 bytes (a long list in the query) is refused before
            # any schema sees it: 414 (431 for headers) is a rejection too.
            "negative_data_rejection": {"expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
                                                              "414", "431"]},
        },
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": chosen["stateful"]}},
        "generation": {"mode": "all", "max-examples": chosen["max_examples"],
                       "deterministic": chosen["deterministic"], "no-shrink": not chosen["shrink"],
                       "database": "none"},
        "max-time": chosen["max_time"],
        "continue-on-failure": True,
        "request-timeout": 30,
        "cache": {"enabled": False},  # nothing written to the work tree
        "suppress-health-check": ["all"],
        "auth": {"auto-signup": False},  # the Bearer provider below is the identity
    })
    schema = schemathesis.openapi.from_url(target.url + "/api/openapi.json", config=config)
    acting_as = target.identities[identity]

    class Bearer:
        """The identity's token; an operation that ends a session gets a throwaway user's."""

        def get(self, case, ctx):
            if case.operation.path in SESSION_ENDING:
                return target.throwaway(refresh=case.operation.path == "/api/auth/refresh")
            return acting_as.bearer()

        def set(self, case, data, ctx):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    schema.auth.auth(refresh_interval=None)(Bearer)  # asked for every case: the identity caches its token
    findings, errors, stop = [], [], None
    answers: dict[str, Counter] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for interaction in event.recorder.interactions.values():
                status = interaction.response.status_code if interaction.response is not None else "none"
                answers.setdefault(event.label or "?", Counter())[status] += 1
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        findings.append(Finding(node.name, failure.operation or event.label or "?",
                                                failure.title, node.failure_info.code_sample))
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            stop = f"{event.stop_reason.value} after {event.running_time:.0f}s"
            for failure in event.failures:
                findings.append(Finding(type(failure).checks[0] if type(failure).checks else "custom",
                                        failure.operation or "*", failure.title, failure.message))
    lines = [f"{operation}: " + ", ".join(f"{status} x{n}" for status, n in sorted(count.items(), key=str))
             for operation, count in sorted(answers.items())]
    total = sum(sum(count.values()) for count in answers.values())
    return findings, errors, f"{total} requests, {stop}\n  " + "\n  ".join(lines)


@pytest.mark.parametrize("identity", ["customer", "admin"])
def test_fuzzing_through_the_gateway_finds_nothing_outside_the_baseline(fuzz_target, identity):
    entries = load_baseline()
    findings, errors, summary = fuzz(fuzz_target, identity)
    new = [f for f in findings if baselined(entries, f, identity) is None]
    seen = sorted({(f.check, f.operation) for f in findings if f not in new})
    print(f"\nas {identity}: {summary}\n{len(findings)} check failures, {len(new)} outside the baseline; "
          f"baselined ones seen: {seen}")
    report = {}
    for f in new:  # one example of each (check, operation)
        report.setdefault((f.check, f.operation), f)
    assert not errors, "\n".join(errors)
    assert not report, "\n\n".join(f"{check} on {operation}: {f.title}\n{f.reproduce}"
                                  for (check, operation), f in sorted(report.items()))


def test_the_baseline_names_real_checks_and_operations_and_gives_reasons(fuzz_target):
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    names = set(CHECKS.get_all_names())
    document = Api(fuzz_target.url).ok("GET", "/api/openapi.json")
    operations = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
                  if method in ("get", "put", "post", "patch", "delete")}
    for entry in load_baseline():
        assert entry["check"] in names, entry
        assert entry["operation"] in operations | {"*"}, entry
        assert entry.get("identity", "customer") in ("customer", "admin"), entry

