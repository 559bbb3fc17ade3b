"""Starting, waiting for and stopping child processes: `make run`'s, the benchmarks' and the tests'.

A child runs in a process group of its own (so one signal reaches everything it forks) with its
output in a log file. Stopping it is a signal to it, then SIGKILL to whatever of its group outlives
the timeout, and waiting until none of the group is left.
"""
from __future__ import annotations

import contextlib
import ctypes
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import psutil

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"


def procfile(path: Path = PROCFILE) -> dict[str, str]:
    """The Procfile's processes in file order: name -> command line (for ``sh -c``, as honcho runs it)."""
    from honcho.environ import parse_procfile

    return dict(parse_procfile(path.read_text()).processes)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # In the child before exec. PR_SET_PDEATHSIG fires when the *thread* that started it ends.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Process:
    """A child process started at construction.

    In a session (so a process group) of its own unless ``own_group=False``, where a terminal's
    Ctrl-C reaches it along with us. With ``log`` its stdout and stderr are appended to that file;
    other ``subprocess.Popen`` options (``stdout``, ``text``...) pass through. With
    ``die_with_parent`` it gets SIGTERM when we die, SIGKILL included (Linux).
    """

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
                 cwd: Path = ROOT, name: str | None = None, own_group: bool = True,
                 die_with_parent: bool = False, **popen) -> None:
        self.name = name or Path(argv[0]).name
        self.log_path = Path(log) if log is not None else None
        self.own_group = own_group
        preexec = _die_with_parent if die_with_parent and sys.platform.startswith("linux") else None
        with open(self.log_path, "ab") if self.log_path else contextlib.nullcontext() as out:
            if out is not None:
                popen.update(stdout=out, stderr=subprocess.STDOUT)
            self.popen = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                          start_new_session=own_group, preexec_fn=preexec, **popen)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        if not (self.log_path and self.log_path.exists()):
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 200_000))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-n:])

    def wait_ready(self, ready: Callable[[], object], *, timeout: float, what: str) -> "Process":
        """``wait_until`` for this process; it is stopped when it does not get ready."""
        try:
            wait_until(ready, timeout=timeout, what=what, process=self)
        except BaseException:
            self.stop(timeout=5.0)
            raise
        return self

    def stop(self, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` to the process, SIGKILL to what of its group outlives ``timeout``; its exit status.

        Its group is waited for even when the process itself is already gone.
        """
        if self.own_group:
            kill_group(self.pid, leader=self.pid if self.alive() else None, sig=sig, timeout=timeout)
        elif self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        try:
            return self.popen.wait(5.0)
        except subprocess.TimeoutExpired:  # unkillable (uninterruptible sleep): not worth a hang
            return None


# ---------------------------------------------------------------- readiness


def wait_until(ready: Callable[[], object], *, timeout: float, what: str, process: Process | None = None,
               interval: float = 0.1) -> None:
    """Poll ``ready()`` until it returns True; anything else it returns is the state quoted on failure.

    RuntimeError if ``process`` exits first, TimeoutError after ``timeout`` s, with its log's tail.
    """
    deadline = time.monotonic() + timeout
    while (state := ready()) is not True:
        exited = process is not None and not process.alive()
        if exited or time.monotonic() >= deadline:
            tail = f"\n{process.log_tail()}" if process is not None else ""
            if exited:
                raise RuntimeError(f"{process.name} exited ({process.popen.returncode}) before {what}{tail}")
            raise TimeoutError(f"waited {timeout:g}s for {what} (last: {state}){tail}")
        time.sleep(interval)


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, timeout: float = 1.0) -> bool | str:
    """True when ``url`` answers 200 (asked directly, never through a proxy); else what happened."""
    try:
        with _no_proxy.open(url, timeout=timeout) as response:
            return response.status == 200 or str(response.status)
    except urllib.error.HTTPError as exc:
        with exc, contextlib.suppress(OSError, http.client.HTTPException):
            return f"{exc.code} {exc.read()[:200]!r}"
        return str(exc.code)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return repr(exc)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- stopping


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (ours or not); a zombie does not."""
    try:
        return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, *, timeout: float, sig: int = signal.SIGTERM) -> None:
    """``sig`` to the process ``pid`` (ours or not), SIGKILL if it outlives ``timeout``; waits until it is gone."""
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except OSError:  # gone, or not ours to signal
            return
        if _until(lambda: not alive(pid), wait):
            return
        logger.warning("pid %s ignored %s for %.0fs", pid, signal.Signals(signum).name, wait)


def group_members(*pgids: int) -> list[int]:
    """Pids of the processes (zombies aside) in the process groups ``pgids``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in pgids:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def _signal_groups(pgids, signum: int) -> None:
    for pgid in pgids:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signum)


def kill_group(*pgids: int, leader: int | None = None, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """``sig`` to ``leader`` alone (it stops the rest), else to the process groups ``pgids``; SIGKILL to
    whatever of them outlives ``timeout``. Returns once none is left, or 5 s after the SIGKILL."""
    if leader is None:
        _signal_groups(pgids, sig)
    else:
        with contextlib.suppress(OSError):
            os.kill(leader, sig)
    if not _until(lambda: not group_members(*pgids), timeout):
        logger.warning("process groups %s outlived %s for %.0fs; killing them",
                       pgids, signal.Signals(sig).name, timeout)
        _signal_groups(pgids, signal.SIGKILL)
        _until(lambda: not group_members(*pgids), 5.0)
