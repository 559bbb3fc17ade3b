"""The system under test: servers, the Procfile's processes, an SMTP sink.

Embedded PostgreSQL (with pg_stat_statements preloaded) and Redis in the bench's
work folder unless DATABASE_URL / REDIS_URL are given. The HTTP and Celery
processes are the Procfile's own command lines, run with ``sh -c`` like honcho
does, so whatever the Procfile says (workers, threads, concurrency) is what gets
measured; the bench only picks free ports and points SMTP at its sink.
"""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from bench.pg import PgClient, database_of, with_database
from bench.procs import ROOT, Supervisor
from devtools import embedded, launcher
from devtools.launcher import free_port, procfile

VENV_BIN = Path(sys.executable).parent
HTTP_NAMES = ("gateway", "users", "orders", "inventory", "notifications", "web")

# Settings the bench sets for the system unless the environment already does.
# Rate limits: the gateway's per-IP default (600/minute) would turn a wrk run from
# one address into 429s; the limiter still runs (one Redis round trip per request).
# APP_ENV=production: the configuration that is deployed is the one measured (JSON
# logs; it requires a JWT secret, see SECRETS).
BENCH_DEFAULTS = {
    "RATE_LIMIT_DEFAULT": "1000000/minute",
    "RATE_LIMIT_LOGIN": "1000000/minute",
    "RATE_LIMIT_PAGES": "1000000/minute",
    "APP_ENV": "production",
}
# Secrets production requires: random per run unless the environment gives them; never
# written anywhere (the report lists what the bench set, with this placeholder).
SECRETS = ("JWT_SECRET_KEY", "WEB_SECRET_KEY")
RANDOM_SECRET = "(random per run)"


class Stack:
    def __init__(self, sup: Supervisor, *, workdir: Path, log=print):
        self.sup = sup
        self.workdir = workdir
        self.log = log
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url: str | None = None
        self.redis_url: str | None = None
        self.embedded_pg = None
        self.embedded_redis = None
        self.pgss: dict = {"enabled": False, "reason": "not set up"}
        self.ports: dict[str, int] = {}
        self.smtp_port: int | None = None
        self.mail_count_file = workdir / "mail.count"
        self.entries = procfile()
        self.http_entries = {n: c for n, c in self.entries.items() if n in HTTP_NAMES}
        self.celery = {n: c for n, c in self.entries.items()
                       if "celery" in c and "flower" not in c and n not in HTTP_NAMES}
        # Not started: the bench runs its own SMTP sink (it counts what arrives), and Flower
        # is a dashboard, not part of the system under test.
        self.skipped = [n for n in self.entries if n not in self.http_entries and n not in self.celery]
        self.env: dict[str, str] = {}
        self.bench_settings: dict[str, str] = {}

    # -- servers -----------------------------------------------------------------
    def start_servers(self) -> None:
        given_db = os.environ.get("DATABASE_URL")
        if given_db:
            self.database_url = given_db
            self.log(f"using the PostgreSQL server in DATABASE_URL ({database_of(given_db)})")
        else:
            pgdata = self.data_dir / "pgdata"
            server = embedded.start_postgres(pgdata, database="oms")
            self.sup.add_server(server)
            self._enable_pgss_embedded(server)
            self.sup.forget_server(server)
            server = embedded.start_postgres(pgdata, database="oms")  # again: preload takes a restart
            self.sup.add_server(server)
            self.embedded_pg = server
            self.database_url = server.url
            self.log(f"embedded PostgreSQL ready (pid {server.pid})")
        given_redis = os.environ.get("REDIS_URL")
        if given_redis:
            self.redis_url = given_redis
            self.log("using the Redis server in REDIS_URL")
        else:
            server = embedded.start_redis(self.data_dir / "redis", persistent=True)  # as `make run` does
            self.sup.add_server(server)
            self.embedded_redis = server
            self.redis_url = server.url
            self.log(f"embedded Redis ready (pid {server.pid})")
        self._setup_pgss()

    def _enable_pgss_embedded(self, server) -> None:
        admin = PgClient(with_database(server.url, "postgres"))
        try:
            admin.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            # Nested statements (the order-history trigger's INSERT) are counted too, apart.
            admin.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
            admin.execute("ALTER SYSTEM SET pg_stat_statements.max = 10000")
        finally:
            admin.close()
        server.stop()

    def admin_url(self) -> str:
        return with_database(self.database_url, "postgres")

    def _setup_pgss(self) -> None:
        """CREATE EXTENSION where the bench reads it (postgres) and in the application database."""
        admin = PgClient(self.admin_url())
        try:
            self._ensure_database(admin)
            preload = admin.fetchval("SHOW shared_preload_libraries") or ""
            if "pg_stat_statements" not in preload:
                self.pgss = {"enabled": False,
                             "reason": "pg_stat_statements is not in shared_preload_libraries of the given server"}
                return
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            app_db = PgClient(self.database_url)
            try:
                app_db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                app_db.close()
            self.pgss = {"enabled": True, "track": admin.fetchval("SHOW pg_stat_statements.track"),
                         "track_utility": admin.fetchval("SHOW pg_stat_statements.track_utility")}
        finally:
            admin.close()

    def _ensure_database(self, admin: PgClient) -> None:
        name = database_of(self.database_url)
        if not admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            admin.execute(f'CREATE DATABASE "{name}"')

    def pgbench_path(self) -> str:
        return embedded.pg_bin("pgbench") if self.embedded_pg is not None else "pgbench"

    # -- environment -----------------------------------------------------------
    def build_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name, value in BENCH_DEFAULTS.items():
            if not env.get(name):
                env[name] = value
                self.bench_settings[name] = value
        for name in SECRETS:
            if not env.get(name):
                env[name] = secrets.token_urlsafe(32)
                self.bench_settings[name] = RANDOM_SECRET
        self.smtp_port = free_port()
        ports = {name: free_port() for name in HTTP_NAMES}
        self.ports = ports
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            OMS_DATA_DIR=str(self.data_dir),
            PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            PYTHONUNBUFFERED="1",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.smtp_port),
            **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
            GATEWAY_CONSOLE_PORT=str(free_port()),
        )
        for name in HTTP_NAMES:
            env.pop(f"{name.upper()}_URL", None)  # derived from the ports above
        env.pop("GATEWAY_URL", None)  # the web's: derived from GATEWAY_CONSOLE_PORT
        (self.data_dir / "run").mkdir(parents=True, exist_ok=True)
        self.env = env
        return env

    # -- processes ---------------------------------------------------------------
    def start_mail_sink(self) -> None:
        self.sup.start("smtp-sink", [
            sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.smtp_port}",
            "-c", "bench.mailsink.CountingSink", str(self.mail_count_file),
        ], env=self.env).wait_ready(lambda: launcher.port_open(self.smtp_port), timeout=20,
                                    what=f"a listener on port {self.smtp_port}")

    def migrate(self) -> None:
        self.sup.run("migrate", [sys.executable, "-m", "app", "migrate"], env=self.env, timeout=300)

    def create_admin(self, email: str, password: str) -> None:
        self.sup.run("create-admin", [sys.executable, "-m", "app", "create-admin", "--email", email,
                                      "--password", password], env=self.env, timeout=120)

    def start_http(self) -> None:
        for name, command in self.http_entries.items():
            self.sup.start(name, ["/bin/sh", "-c", command], env=self.env)
        for name in self.http_entries:
            wait_http(self.sup, name, f"http://127.0.0.1:{self.ports[name]}/health", 60)
        for name in self.http_entries:
            if name != "gateway":
                wait_http(self.sup, name, f"http://127.0.0.1:{self.ports[name]}/ready", 60)
        # The gateway's /ready also asks upstreams the Procfile may not run: a real read instead.
        wait_http(self.sup, "gateway", f"{self.gateway_url}/api/inventory/products?limit=1", 60)

    def restart_http(self, name: str, **env: str) -> None:
        """One HTTP process again, with ``env`` over the system's environment."""
        self.sup.stop(name)
        self.sup.start(name, ["/bin/sh", "-c", self.http_entries[name]], env={**self.env, **env})
        wait_http(self.sup, name, f"http://127.0.0.1:{self.ports[name]}/ready", 60)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def start_workers(self) -> None:
        self.start_workers_named(list(self.celery))

    def start_workers_named(self, names: list[str]) -> None:
        for name in names:
            self.sup.start(name, ["/bin/sh", "-c", self.celery[name]], env=self.env)

    def stop_workers(self) -> None:
        for name in list(self.celery)[::-1]:
            self.sup.stop(name, timeout=60)

    def workers_running(self) -> bool:
        return all(n in self.sup.procs and self.sup.procs[n].alive() for n in self.celery)

    def check_alive(self) -> list[str]:
        """Names of the system's processes that died."""
        names = list(self.http_entries) + list(self.celery)
        return [n for n in names if n in self.sup.procs and not self.sup.procs[n].alive()]


def wait_http(sup: Supervisor, name: str, url: str, timeout: float) -> None:
    """Until ``url`` answers 200; fails early if the process ``name`` exits."""
    launcher.wait_until(lambda: launcher.http_ok(url, timeout=2.0), timeout=timeout, what=f"a 200 from {url}",
                        process=sup.procs.get(name), interval=0.2)
