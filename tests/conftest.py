"""Test session wiring: real PostgreSQL and Redis, a throwaway database per session.

``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` name servers to use; without them the
session starts embedded ones (devtools/embedded.py) in a temporary folder.
"""
from __future__ import annotations

import os
import secrets
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import anyio
import asyncpg
import kombu.pools
import pytest
import redis

from config import dburl
from devtools import launcher
from devtools.launcher import free_port

ROOT = Path(__file__).resolve().parent.parent

# The benchmark harness's smoke test is opt-in (it runs every scenario): not collected
# at all otherwise, rather than collected and skipped.
collect_ignore = [] if os.environ.get("BENCH_SMOKE") == "1" else ["test_bench_smoke.py"]
PYTHON = sys.executable
BIN = Path(sys.executable).parent


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """(postgres server URL, redis URL): given, or embedded ones for this session."""
    stops = []
    pg_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not pg_url or not redis_url:
        from devtools import embedded

        base = tmp_path_factory.mktemp("servers")
        if not pg_url:
            pg = embedded.start_postgres(base / "pgdata", database="postgres")
            stops.append(pg.stop)
            pg_url = pg.url
        if not redis_url:
            rd = embedded.start_redis(base / "redis", persistent=False)
            stops.append(rd.stop)
            redis_url = rd.url
    try:
        yield pg_url, redis_url
    finally:
        for stop in reversed(stops):
            stop()


def new_database(server_url: str, prefix: str = "oms_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    anyio.run(_admin, server_url, f'CREATE DATABASE "{name}"')
    return dburl.with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drop the database and the roles its migrations made (they are the server's, not its)."""
    from config.settings import load_settings
    from infra import roles

    name = dburl.database_name(url)
    anyio.run(_admin, server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop_roles():
        conn = await asyncpg.connect(server_url, timeout=10)
        try:
            await roles.drop(conn, load_settings({"DATABASE_URL": url}).role_prefix)
        finally:
            await conn.close()

    anyio.run(drop_roles)


@pytest.fixture(scope="session")
def database_url(servers):
    server_url = servers[0]
    url = new_database(server_url)
    yield url
    from infra import runtime

    runtime.stop()
    drop_database(server_url, url)


@pytest.fixture(scope="session")
def redis_url(servers):
    url = servers[1]
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def own_redis(tmp_path_factory):
    """A Redis server of this test's own (embedded, on a unix socket): its redis-py URL.

    For tests that stop, fill or spy on Redis, or whose worker must not share a broker
    with the session's: nothing else uses it, with or without TEST_REDIS_URL.
    """
    from devtools import embedded

    # A folder of its own under the session's base: short enough for a socket path.
    server = embedded.start_redis(tmp_path_factory.mktemp("own-redis"), persistent=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_broker(own_redis):
    """A broker of this test's own for CELERY_BROKER_URL (own_redis as kombu spells it)."""
    from config.celery import broker_url

    return broker_url(own_redis)


@contextmanager
def celery_broker(app, url: str):
    """Point a Celery app's publishing at ``url`` for a while, then back where it was."""

    def use(broker):
        # Celery's pools live in kombu's registry, keyed by broker and shared by every app:
        # closing one there would hand the closed pool to the next app on that broker.
        # reset() closes them and forgets them; the next publish opens pools on the new broker.
        kombu.pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
        app.conf.broker_url = broker

    previous = app.conf.broker_url
    use(url)
    try:
        yield app
    finally:
        use(previous)


@pytest.fixture(scope="session")
def base_env(database_url, redis_url):
    """Environment for child processes and for load_settings() in this one.

    DATABASE_URL names the server's admin (the owner): ``migrate`` uses it as is, and
    every other process logs in as its own role of the session's database instead.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        APP_ENV="test",
        # Outside development a real secret is required (config/settings.py): one per session.
        JWT_SECRET_KEY=secrets.token_urlsafe(48),
        LOG_LEVEL="WARNING",
        DB_POOL_MIN="1",
        DB_POOL_MAX="4",
        # Most tests leave orders pending (no worker runs): admission control would refuse
        # every order after the first second. Its own tests turn it on.
        ORDER_LATENCY_BUDGET_SECONDS="0",
        TRACE_SAMPLE_RATIO="1",
        PYTHONPATH=str(ROOT),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    # Code imported by this process (the Celery app, settings) reads the same servers.
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    return env


@pytest.fixture(scope="session")
def settings(base_env):
    from config.settings import load_settings

    return load_settings(base_env)


@pytest.fixture(scope="session")
def rt(settings):
    """This test process's runtime (loop, pool, managers), migrated.

    Migrated as the owner DATABASE_URL names, then logged in like a Celery worker: as the
    worker role, each manager acting as its schema's role (infra/roles.py).
    """
    from infra import migrations, runtime

    migrations.migrate(settings, timeout=120)
    return runtime.start(settings, name="tests")


@pytest.fixture(scope="session")
def users_app(rt, settings):
    from app import create_app

    return create_app("users", settings)


@pytest.fixture
def client(users_app):
    return users_app.test_client()


# -- live processes ---------------------------------------------------------------
def _log_file(name: str) -> Path:
    return Path(tempfile.mkstemp(prefix=f"oms-{name}-", suffix=".log")[1])


class Live(launcher.Process):
    """A gunicorn process of ours on a free port; ``proc`` is its Popen."""

    def __init__(self, service: str, env: dict, *, port: int | None = None, **extra_env: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Only the session's stack registers itself: a test's private instance must not
        # receive the session gateway's traffic.
        env = {**env, "SERVICE_NAME": service, "PORT": str(self.port), "REGISTRY_ENABLED": "0", **extra_env}
        if service == "gateway":
            # Its listener for the web console's API calls (config/gunicorn.conf.py).
            env.setdefault("GATEWAY_CONSOLE_PORT", str(free_port()))
            self.console_url = f"http://127.0.0.1:{env['GATEWAY_CONSOLE_PORT']}"
        super().__init__([str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", f"app.wsgi:{service}"],
                         env=env, log=_log_file(service), name=service)
        self.proc = self.popen
        health = self.url + "/health"
        self.wait_ready(lambda: launcher.http_ok(health), timeout=30, what=f"a 200 from {health}")


@pytest.fixture(scope="session")
def live_users(rt, base_env):
    # It trusts the gateway's hop (on loopback), so its login throttle sees each client.
    server = Live("users", REGISTRY_ENABLED="1", env=base_env, WEB_CONCURRENCY="1", GUNICORN_THREADS="4",
                  TRUSTED_PROXIES="127.0.0.1/32")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_inventory(rt, base_env):
    server = Live("inventory", REGISTRY_ENABLED="1", env=base_env, WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
    yield server
    server.stop()


class MailSink:
    """A real SMTP server (aiosmtpd) that keeps what it receives; ``refuse`` holds addresses to 550."""

    def __init__(self, port: int | None = None):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        self.refuse: set[str] = set()
        self.port = port or free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes, policy

        self.messages.append(message_from_bytes(envelope.original_content, policy=policy.default))
        return "250 Message accepted"

    def start(self) -> "MailSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture(scope="session")
def mail_sink():
    sink = MailSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def stack_env(base_env, live_users, live_inventory, mail_sink):
    """Environment that points every process at the live services."""
    return {**base_env, "USERS_URL": live_users.url, "INVENTORY_URL": live_inventory.url,
            "SMTP_PORT": str(mail_sink.port)}


@pytest.fixture(scope="session")
def live_orders(stack_env):
    server = Live("orders", REGISTRY_ENABLED="1", env=stack_env, WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_notifications(stack_env):
    server = Live("notifications", REGISTRY_ENABLED="1", env=stack_env, WEB_CONCURRENCY="1", GUNICORN_THREADS="4")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_gateway(stack_env, live_orders, live_notifications):
    server = Live("gateway", REGISTRY_ENABLED="1", env={**stack_env, "ORDERS_URL": live_orders.url,
                              "NOTIFICATIONS_URL": live_notifications.url},
                  WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
    yield server
    server.stop()


class WebStack:
    """The web console and a gateway in front of it: ``url`` is what a browser opens."""

    def __init__(self, gateway: Live, web: Live):
        self.gateway, self.web = gateway, web
        self.url = gateway.url

    def stop(self) -> None:
        self.web.stop()
        self.gateway.stop()


def start_web_stack(stack_env: dict, orders: Live, notifications: Live, **gateway_env: str) -> WebStack:
    """A gateway that serves the web console at / (and the API of the session's services),
    and the web process, which calls the API on that gateway's console listener."""
    web_port = free_port()
    gateway = Live("gateway", env={**stack_env, "ORDERS_URL": orders.url, "NOTIFICATIONS_URL": notifications.url,
                                   "WEB_URL": f"http://127.0.0.1:{web_port}", **gateway_env},
                   WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
    try:
        web = Live("web", port=web_port, env={**stack_env, "GATEWAY_URL": gateway.console_url,
                                              "WEB_SECRET_KEY": secrets.token_urlsafe(48)},
                   WEB_CONCURRENCY="1", GUNICORN_THREADS="8")
    except BaseException:
        gateway.stop()
        raise
    return WebStack(gateway, web)


@pytest.fixture(scope="session")
def live_web(stack_env, live_orders, live_notifications):
    stack = start_web_stack(stack_env, live_orders, live_notifications)
    yield stack
    stack.stop()


class Worker(launcher.Process):
    """A real Celery worker process (prefork) on the test broker; ``proc`` is its Popen."""

    def __init__(self, env: dict, *, concurrency: int = 2, beat: bool = False, **extra_env: str):
        log = _log_file("worker")
        command = [str(BIN / "celery"), "-A", "workers.celery_app:app", "worker", "--loglevel=INFO",
                   f"--concurrency={concurrency}", "-Q", "default,inventory,orders,notifications,outbox",
                   "--without-gossip", "--without-mingle", "-n", f"test-{uuid.uuid4().hex[:6]}@%h"]
        if beat:
            command += ["-B", "-s", f"{log}.beat"]
        super().__init__(command, env={**env, "SERVICE_NAME": "worker", "LOG_LEVEL": "INFO", **extra_env},
                         log=log, name="worker")
        self.proc = self.popen
        self.wait_ready(lambda: " ready." in self.log(), timeout=30, what="its ready line")


@pytest.fixture(scope="session")
def live_worker(stack_env, live_orders):
    worker = Worker({**stack_env, "ORDERS_URL": live_orders.url}, beat=True, OUTBOX_SWEEP_SECONDS="1")
    yield worker
    worker.stop()


# -- clients of the session's stack --------------------------------------------------
@pytest.fixture(scope="module")
def gateway(live_gateway):
    from tests.support import Api

    return Api(live_gateway.url)


@pytest.fixture(scope="module")
def admin(gateway):
    from tests.support import admin_token

    return admin_token(gateway)


@pytest.fixture
def customer(gateway):
    from tests.support import register

    return register(gateway)["access_token"]
