"""CPU profiles of the system under test during a phase, taken with py-spy from outside.

``py-spy record --gil --nonblocking``: only samples in which a thread holds the GIL (CPU time
running Python; waits and C code that releases the GIL are not in it), without pausing the
targets, so the phase's figures stay what they would be without the profiler, which costs
only its own CPU (claimed under ``bench.monitor.PROFILER`` in the phase's CPU account). The
targets are the processes that do the work: each HTTP service's gunicorn workers (not the master), the Celery
worker's main process (it consumes and dispatches) and its pool children. Sampling starts
after the phase's warm-up and ends before the phase does; raw stacks stay beside the report.
"""
from __future__ import annotations

import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.procs import ROOT, Supervisor

RATE = 100  # samples per second, py-spy's default
# The Procfile processes on the profiled phases' paths; users, notifications and beat do next to
# nothing there, and each py-spy costs about 0.015 core of a 2-core machine.
PROFILED = ("gateway", "orders", "inventory", "worker")
TINY_SHARE = 0.02  # fewer samples than this share of the window's ticks: nothing worth a table
END_MARGIN_S = 1.0  # py-spy stops this long before the phase does

FRAME = re.compile(r"^(?P<function>.+) \((?P<file>.+?)(?::\d+)?\)$")
# Paths as in an import: site-packages, the repository and the standard library's folder left out.
PATH_PREFIXES = re.compile(r"^.*?/(?:site|dist)-packages/|^" + re.escape(str(ROOT)) + r"/|^.*?/lib/python3\.\d+/")

# Frames in (nearly) every sample of a thread, which say nothing about where its time goes: thread
# and process bootstrap, run loops, the WSGI entry and view dispatch. Module path (a folder if it ends
# in "/") -> qualified function names, None for all of the module's. py-spy names functions by their
# qualified name on Python >= 3.11, by their bare name before.
PLUMBING = {
    "threading.py": ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run"),
    "concurrent/futures/thread.py": ("_worker", "_WorkItem.run"),
    "gunicorn/arbiter.py": None,
    "gunicorn/app/": None,
    "gunicorn/workers/base.py": ("Worker.init_process",),
    "gunicorn/workers/gthread.py": ("ThreadWorker.init_process", "ThreadWorker.run",
                                    "ThreadWorker.wait_for_and_dispatch_events", "ThreadWorker.handle",
                                    "ThreadWorker.handle_request"),
    "flask/app.py": ("Flask.__call__", "Flask.wsgi_app", "Flask.full_dispatch_request", "Flask.dispatch_request"),
    "flask/views.py": None,
    "opentelemetry/instrumentation/flask/__init__.py": ("_rewrapped_app.<locals>._wrapped_app",),
    "celery/__main__.py": None,
    "celery/bin/": None,
    "click/": None,
    "celery/apps/worker.py": None,
    "celery/bootsteps.py": None,
    "celery/concurrency/": None,
    "celery/worker/worker.py": ("WorkController.start",),
    "celery/worker/consumer/consumer.py": ("Consumer.start", "Evloop.start"),
    "celery/worker/loops.py": ("asynloop",),
    "celery/app/trace.py": ("_install_stack_protection.<locals>.__protected_call__",),
    "celery/app/autoretry.py": ("add_autoretry_behaviour.<locals>.run",),
    "kombu/asynchronous/hub.py": ("Hub.create_loop",),
    "billiard/process.py": None,
    "billiard/popen_fork.py": None,
    "billiard/context.py": None,
    "billiard/pool.py": ("Worker.__call__", "Worker.workloop", "Pool.__init__", "Pool._create_worker_process",
                         "Pool._repopulate_pool", "Pool._maintain_pool"),
    "asyncio/runners.py": None,
    "asyncio/base_events.py": ("BaseEventLoop.run_forever", "BaseEventLoop.run_until_complete",
                               "BaseEventLoop._run_once"),
    "asyncio/events.py": ("Handle._run",),
    "anyio/_backends/_asyncio.py": ("AsyncIOBackend.run",),
    "anyio/_core/_eventloop.py": ("run",),
    "anyio/from_thread.py": ("start_blocking_portal.<locals>.run_blocking_portal",),
}


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def window(duration: float, warmup: float) -> int:
    """Whole seconds to sample (py-spy takes integers) after ``warmup``, ending before the phase does."""
    return int(duration - warmup - min(END_MARGIN_S, duration / 10))


def targets(sup: Supervisor, celery: list[str]) -> list[tuple[str, list[int]]]:
    """(label, pids) of the processes of ``PROFILED`` that do the work. The Procfile's lines exec the
    server itself, so a proc's pid is the gunicorn master or the Celery main process."""
    out = []
    for name in PROFILED:
        proc = sup.procs.get(name)
        if proc is None or not proc.alive():
            continue  # the worker, during placement
        try:
            children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            continue
        if name in celery:
            out += [(f"{name} (main)", [proc.pid])] + ([(f"{name} (pool)", children)] if children else [])
        elif children:
            out.append((name, children))
    return out


def _cpu_seconds(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class PhaseProfile:
    """py-spy on each target from ``warmup`` s into the phase for ``seconds`` s; a context manager
    around the phase's load. A thread starts them after the warm-up and stays until they are
    reaped: PR_SET_PDEATHSIG (which the bench's children get) fires when the spawning *thread* ends."""

    def __init__(self, sup: Supervisor, py_spy: str, *, phase: str, targets: list[tuple[str, list[int]]],
                 warmup: float, seconds: int, out_dir: Path, env: dict[str, str]):
        self.sup, self.py_spy, self.phase, self.targets = sup, py_spy, phase, targets
        self.warmup, self.seconds, self.out_dir, self.env = warmup, seconds, out_dir, env
        self.runs: list[dict] = []  # one per pid: label, pid, raw, log, popen, cores
        self.cpu_seconds = 0.0  # py-spy's own
        self.errors: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bench-profile-{phase}", daemon=True)

    def __enter__(self) -> "PhaseProfile":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        if self._done.wait(self.warmup):
            return  # the phase ended within its warm-up
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for label, pids in self.targets:
                for pid in pids:
                    stem = re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.phase}-{label}-{pid}").strip("-")
                    run = {"label": label, "pid": pid, "raw": self.out_dir / f"{stem}.raw",
                           "log": self.out_dir / f"{stem}.log", "cores": None}
                    argv = [self.py_spy, "record", "--pid", str(pid), "--duration", str(self.seconds), "--rate",
                            str(RATE), "--gil", "--nonblocking", "--full-filenames", "--format", "raw",
                            "--output", str(run["raw"])]
                    run["popen"] = self.sup.spawn(argv, env=self.env, log_path=run["log"])
                    self.runs.append(run)
        except Exception as exc:  # the phase goes on without (the rest of) its profile
            self.errors.append(f"could not start py-spy: {exc!r}")
        # Each target's CPU over the window as the kernel counts it: the samples cannot say (only
        # those holding the GIL are kept, and --nonblocking loses some reads).
        before, t0 = {run["pid"]: _cpu_seconds(run["pid"]) for run in self.runs}, time.monotonic()
        self._done.wait(self.seconds)
        elapsed = time.monotonic() - t0
        for run in self.runs:
            used = _cpu_seconds(run["pid"])
            if used is not None and before[run["pid"]] is not None and elapsed > 0:
                run["cores"] = (used - before[run["pid"]]) / elapsed
        self._done.wait()
        # py-spy should have stopped on its own by now; one that did not (the phase ended early)
        # gets SIGINT, on which it still writes what it sampled.
        for run in self.runs:
            self.cpu_seconds += self.sup.reap(run["popen"], timeout=1.0, interrupt=signal.SIGINT)

    def summary(self, logs_dir: Path) -> dict:
        """Per label: its CPU, samples, top functions inclusive and self; raw files relative to ``logs_dir``."""
        errors, processes, skipped, by_label = list(self.errors), [], [], {}
        for run in self.runs:
            if run["popen"].returncode == 0 and run["raw"].exists():
                by_label.setdefault(run["label"], []).append(run)
            else:
                errors.append(f"{run['label']} pid {run['pid']}: py-spy exited {run['popen'].returncode}: "
                              f"{_py_spy_error(run['log'])}")
        for label, runs in by_label.items():
            stacks = Counter()
            for run in runs:
                stacks.update(parse_raw(run["raw"].read_text(errors="replace")))
            samples = sum(stacks.values())
            entry = {"process": label, "pids": [r["pid"] for r in runs], "samples": samples,
                     "failed_reads": sum(_failed_reads(r["log"]) for r in runs),
                     "cores": round(sum(r["cores"] or 0.0 for r in runs), 2)}
            if samples < TINY_SHARE * RATE * self.seconds:
                skipped.append(entry)
            else:
                processes.append({**entry, "inclusive": top_inclusive(stacks, samples),
                                  "self": top_self(stacks, samples),
                                  "raw": [str(r["raw"].relative_to(logs_dir)) for r in runs]})
        return {"tool": "py-spy record --gil --nonblocking", "rate": RATE, "started_after_s": self.warmup,
                "seconds": self.seconds, "profiler_cores": round(self.cpu_seconds / self.seconds, 2),
                "min_share": TINY_SHARE, "processes": processes, "skipped": skipped, "errors": errors}


def _py_spy_error(log: Path) -> str:
    try:
        lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no output"
    return next((l for l in lines if l.startswith(("Error", "Permission"))), lines[-1] if lines else "no output")[:300]


def _failed_reads(log: Path) -> int:
    """py-spy's count of samples it could not read ("Errors: M"): with --nonblocking stacks change while read."""
    try:
        found = re.findall(r"Errors: (\d+)", log.read_text(errors="replace"))
    except OSError:
        return 0
    return int(found[-1]) if found else 0


# -- raw stacks -------------------------------------------------------------------------------------

def frame_name(frame: str) -> str | None:
    """``function (file:line)`` -> ``function (package/module.py)``; None if it is not a frame."""
    m = FRAME.match(frame)
    return None if m is None else f"{m['function']} ({PATH_PREFIXES.sub('', m['file'])})"


def parse_raw(text: str) -> Counter:
    """py-spy's raw format: one ``frame;frame;... COUNT`` line per unique stack, root first.
    Malformed lines (a file cut short) are skipped."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = tuple(frame_name(f) for f in stack.split(";"))
        if stack and count.isdigit() and None not in frames:
            stacks[frames] += int(count)
    return stacks


def plumbing(name: str) -> bool:
    function, _, path = name[:-1].rpartition(" (")
    return any((path.startswith(where) if where.endswith("/") else path.endswith(where))
               and (names is None or any(function == q or q.endswith("." + function) for q in names))
               for where, names in PLUMBING.items())


def top_inclusive(stacks: Counter, samples: int, n: int = 12) -> list[dict]:
    """Functions by the share of samples they appear in anywhere in the stack (once per sample),
    plumbing and a stack's root ``<module>`` (the entry script) left out. Functions in exactly the
    same stacks (a call chain without branches) show once, as the outermost: the caller names what
    the time is spent for."""
    seen: Counter = Counter()
    where: dict[str, set[int]] = {}
    depth: dict[str, int] = {}
    for i, (frames, count) in enumerate(stacks.items()):
        for d, name in enumerate(frames):
            if (d == 0 and name.startswith("<module> ")) or plumbing(name):
                continue
            if i not in where.setdefault(name, set()):
                where[name].add(i)
                seen[name] += count
            depth[name] = min(depth.get(name, d), d)
    chains: dict[frozenset, str] = {}
    for name in seen:
        key = frozenset(where[name])
        if key not in chains or depth[name] < depth[chains[key]]:
            chains[key] = name
    ranked = [(name, c) for name, c in seen.most_common() if chains[frozenset(where[name])] == name]
    return [{"function": name, "percent": round(100 * c / samples, 1)} for name, c in ranked[:n]]


def top_self(stacks: Counter, samples: int, n: int = 8) -> list[dict]:
    """Functions by the share of samples in which they are running (top of the stack)."""
    leaves: Counter = Counter()
    for frames, count in stacks.items():
        leaves[frames[-1]] += count
    return [{"function": name, "percent": round(100 * c / samples, 1)} for name, c in leaves.most_common(n)]
