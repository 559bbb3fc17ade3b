"""Every process the bench starts, and stopping all of them on every exit path.

Each child is a ``devtools.launcher.Process`` (a process group of its own, SIGTERM when
the bench dies). Three nets: ``Supervisor.stop_all`` in the bench's ``finally``;
SIGTERM/SIGHUP turned into ``SystemExit`` so that ``finally`` runs; and a reaper process
(``bench.reaper``) that outlives a SIGKILLed bench and stops what the state file lists.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.launcher import ROOT, Process, group_members, kill_group


@dataclass
class Supervisor:
    workdir: Path
    procs: dict[str, Process] = field(default_factory=dict)
    servers: list = field(default_factory=list)  # devtools.embedded.Embedded objects
    server_dirs: list[str] = field(default_factory=list)
    remove_workdir: bool = True  # the reaper deletes the work folder once it stopped everything
    _reaper: Process | None = None
    _groups: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_file = self.workdir / "reaper.json"
        self._write_state()

    # -- the reaper -------------------------------------------------------------
    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"groups": sorted(self._groups), "server_dirs": self.server_dirs,
                                   "workdir": str(self.workdir) if self.remove_workdir else None}))
        tmp.replace(self.state_file)

    def start_reaper(self) -> None:
        # Not dying with the bench: outliving it is its purpose.
        self._reaper = Process([sys.executable, "-m", "bench.reaper", str(os.getpid()), str(self.state_file)],
                               log=self.logs / "reaper.log")

    def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.stop(timeout=10)

    def add_server(self, server) -> None:
        self.servers.append(server)
        self.server_dirs.append(str(server.data_dir))
        self._write_state()

    def forget_server(self, server) -> None:
        if server in self.servers:
            self.servers.remove(server)
        if str(server.data_dir) in self.server_dirs and not any(
            str(s.data_dir) == str(server.data_dir) for s in self.servers
        ):
            self.server_dirs.remove(str(server.data_dir))
        self._write_state()

    # -- processes --------------------------------------------------------------
    def _launch(self, argv: list[str], **options) -> Process:
        proc = Process(argv, die_with_parent=True, **options)
        self._groups.add(proc.pid)
        self._write_state()
        return proc

    def start(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path = ROOT) -> Process:
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"{name} is already running")
        self.procs[name] = self._launch(argv, env=env, cwd=cwd, name=name, log=self.logs / f"{name}.log")
        return self.procs[name]

    def run(self, name: str, argv: list[str], *, env: dict[str, str], timeout: float, cwd: Path = ROOT,
            check: bool = True) -> subprocess.CompletedProcess:
        """A one-off command (wrk, pgbench, migrate), in its own group, killed with the bench."""
        popen = self._launch(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True).popen
        try:
            out, err = popen.communicate(timeout=timeout)
        except BaseException:
            kill_group(popen.pid, timeout=5.0)
            popen.wait()
            raise
        finally:
            if not group_members(popen.pid):
                self._groups.discard(popen.pid)
                self._write_state()
        result = subprocess.CompletedProcess(argv, popen.returncode, out, err)
        with open(self.logs / f"{name}.log", "a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{out}\n{err}\n")
        if check and popen.returncode != 0:
            raise RuntimeError(f"{name} failed ({popen.returncode}):\n{err.strip()[-3000:]}\n{out.strip()[-2000:]}")
        return result

    def spawn(self, argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> subprocess.Popen:
        """A background process in its own group, stopped with the bench however it ends.

        ``start`` names it as one of ``procs``; a helper spawned directly (a profiler) is ``reap``ed.
        """
        return self._launch(argv, env=env, cwd=cwd, log=log_path).popen

    def reap(self, popen: subprocess.Popen, timeout: float, *, interrupt: int = signal.SIGTERM,
             grace: float = 5.0) -> float:
        """Wait up to ``timeout`` s for a spawned helper, then send it ``interrupt`` and wait ``grace`` s,
        then SIGKILL its group; the CPU seconds it used.

        ``os.wait4`` rather than ``Popen.wait``: the helper's own rusage, which the phase's CPU
        account would otherwise only see folded into the bench's children times.
        """
        cpu = _await_cpu(popen, timeout)
        if cpu is None:
            with contextlib.suppress(OSError):
                os.kill(popen.pid, interrupt)
            cpu = _await_cpu(popen, grace)
        if cpu is None:
            with contextlib.suppress(OSError):
                os.killpg(popen.pid, signal.SIGKILL)
            cpu = _wait_cpu(popen, 0)
        kill_group(popen.pid, timeout=2.0)  # anything it forked
        self._groups.discard(popen.pid)
        self._write_state()
        return cpu

    def stop(self, name: str, timeout: float = 30.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.stop(timeout=timeout)
        self._groups.discard(proc.pid)
        self._write_state()

    def stop_all(self) -> None:
        """Children first (they use the servers), then the embedded servers, then the reaper."""
        for name in list(self.procs)[::-1]:
            try:
                self.stop(name, timeout=30.0)
            except Exception as exc:  # keep stopping the others
                sys.stderr.write(f"bench: stopping {name} failed: {exc!r}\n")
        for pgid in list(self._groups):
            kill_group(pgid, timeout=5.0)
            self._groups.discard(pgid)
        for server in list(self.servers)[::-1]:
            try:
                server.stop()
            except Exception as exc:
                sys.stderr.write(f"bench: stopping {server!r} failed: {exc!r}\n")
            self.forget_server(server)
        self._write_state()
        self.stop_reaper()


def _wait_cpu(popen: subprocess.Popen, options: int) -> float | None:
    """Reap ``popen`` if it exited (``options`` 0: wait for it); its user + system CPU seconds."""
    if popen.returncode is not None:
        return 0.0
    try:
        pid, status, usage = os.wait4(popen.pid, options)
    except ChildProcessError:
        popen.returncode = -1
        return 0.0
    if pid == 0:
        return None
    popen.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _await_cpu(popen: subprocess.Popen, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        cpu = _wait_cpu(popen, os.WNOHANG)
        if cpu is not None or time.monotonic() >= deadline:
            return cpu
        time.sleep(0.05)


class _Terminate(SystemExit):
    pass


def ignore_signals() -> None:
    """While stopping everything: a second Ctrl-C must not cut the cleanup short (it has timeouts)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so every ``finally`` runs."""

    def handler(signum, frame):
        raise _Terminate(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)
    # A background job of a non-interactive shell inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
