"""What PostgreSQL sees during a scenario: connections (sampled) and work done (counters).

Both read through the ``postgres`` database (see bench.pg), so the sampling adds
no transactions or statements to the application database's figures.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter

from bench.pg import PgClient

# Connections that are the bench's, not the application's.
NOT_APP = ("bench-monitor", "pgbench", "bench-sampler")

# What asyncpg sends when a pooled connection is released (Connection.reset):
# https://github.com/MagicStack/asyncpg/blob/master/asyncpg/connection.py (_get_reset_query)
RESET_PATTERNS = {
    "RESET ALL": re.compile(r"^\s*RESET\s+ALL\b", re.I),
    "SELECT pg_advisory_unlock_all()": re.compile(r"pg_advisory_unlock_all\s*\(", re.I),
    "CLOSE ALL": re.compile(r"^\s*CLOSE\s+ALL\b", re.I),
    "UNLISTEN *": re.compile(r"^\s*UNLISTEN\s+\*", re.I),
    "DISCARD ALL": re.compile(r"^\s*DISCARD\s+ALL\b", re.I),
}
TXN_CONTROL = re.compile(r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.I)
SESSION_SETUP = re.compile(r"^\s*(SET|SHOW|SELECT\s+set_config|SELECT\s+pg_catalog\.set_config)\b", re.I)


class ConnectionSampler:
    """Samples pg_stat_activity for the application database every ``interval`` seconds."""

    def __init__(self, url: str, database: str, interval: float = 0.15):
        self.url = url
        self.database = database
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[dict] = []
        self.error: str | None = None

    def __enter__(self) -> "ConnectionSampler":
        self._client = PgClient(self.url, application_name="bench-sampler")
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._client.close()

    def _loop(self) -> None:
        sql = ("SELECT coalesce(application_name, '') AS app, coalesce(state, '') AS state, count(*) AS n "
               "FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' "
               "GROUP BY 1, 2")
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                rows = self._client.fetch(sql, self.database, timeout=5)
                by_app: Counter = Counter()
                active: Counter = Counter()
                for r in rows:
                    by_app[r["app"]] += r["n"]
                    if r["state"] == "active":
                        active[r["app"]] += r["n"]
                self.samples.append({"t": time.time(), "by_app": dict(by_app), "active": dict(active)})
            except Exception as exc:  # keep sampling; report the last error
                self.error = repr(exc)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def summary(self) -> dict:
        peak_total, at_peak, peak_by_app, peak_active = 0, {}, Counter(), 0
        others: Counter = Counter()
        for s in self.samples:
            app = {k: v for k, v in s["by_app"].items() if not k.startswith(NOT_APP)}
            total = sum(app.values())
            if total > peak_total:
                peak_total, at_peak = total, app
            for k, v in app.items():
                peak_by_app[k] = max(peak_by_app[k], v)
            for k, v in s["by_app"].items():
                if k.startswith(NOT_APP):
                    others[k] = max(others[k], v)
            peak_active = max(peak_active, sum(v for k, v in s["active"].items() if not k.startswith(NOT_APP)))
        return {
            "samples": len(self.samples),
            "interval_s": self.interval,
            "peak_total": peak_total,
            "peak_active": peak_active,
            "at_peak": dict(sorted(at_peak.items())),
            "peak_by_application_name": dict(sorted(peak_by_app.items())),
            "peak_bench_connections": dict(others),
            "error": self.error,
        }


# Children of the bench that exit during a phase only show in its children times: wrk and the like.
LOAD_GENERATORS = "load generators (wrk, pgbench, locust)"


class CpuAccount:
    """CPU used during a phase: the whole machine, the run's own processes, and the rest.

    Another program busy on a 2-core machine changes every figure, so each phase
    says how much CPU went elsewhere: others = machine busy - ours. "Ours" is this
    process's descendants and the embedded PostgreSQL server (``roots``, it runs
    detached), plus their children that exited meanwhile (wrk, PostgreSQL
    backends: counted in their parent's children times once reaped).
    """

    def __init__(self, roots: list[int], groups=None):
        self.roots = roots  # detached processes of ours: the embedded PostgreSQL server
        self._groups = groups or dict  # () -> {process group id: name}; the bench's children each lead one
        self.groups: dict[int, str] = {}
        self.claimed: dict[str, float] = {}

    def claim(self, label: str, seconds: float) -> None:
        """CPU seconds of exited children of the bench that were not load generators (the profiler),
        measured by whoever reaped them."""
        self.claimed[label] = self.claimed.get(label, 0.0) + seconds

    def _label(self, pid: int, root: int) -> str:
        if root != os.getpid():
            return "postgres"
        if pid == os.getpid():
            return "bench"
        try:
            return self.groups.get(os.getpgid(pid), "bench")
        except OSError:
            return "bench"

    @staticmethod
    def _busy() -> tuple[float, float]:
        """(process time: user + nice + system, which processes' times add up to; all busy time)."""
        import psutil

        t = psutil.cpu_times()
        process = t.user + t.nice + t.system
        return process, process + sum(getattr(t, f, 0.0) for f in ("irq", "softirq", "steal"))

    def _ours(self) -> tuple[dict[int, tuple[float, str]], dict[str, float]]:
        """CPU seconds of each live process of ours (with its label), and per label the children
        times of processes of ours (what their exited children used: wrk under "bench" etc.)."""
        import psutil

        cpu, reaped = {}, {}
        self.groups = self._groups()
        for root in [os.getpid(), *self.roots]:
            try:
                top = psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    label = self._label(p.pid, root)
                    cpu[p.pid] = (t.user + t.system, label)
                    if p.pid == os.getpid():
                        label = LOAD_GENERATORS
                    reaped[label] = reaped.get(label, 0.0) + t.children_user + t.children_system
                except psutil.Error:
                    continue
        return cpu, reaped

    @staticmethod
    def _others(ours: set[int]) -> dict[int, tuple[float, str]]:
        import psutil

        out = {}
        for p in psutil.process_iter(["cmdline", "name", "cpu_times"]):
            if p.pid in ours:
                continue
            try:
                t = p.info["cpu_times"]
                if t is not None:
                    name = " ".join(p.info["cmdline"] or []) or p.info["name"] or "?"
                    out[p.pid] = (t.user + t.system, name[:100])
            except Exception:
                continue
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = self._busy()
        self._ours0, self._reaped0 = self._ours()
        self._others0 = self._others(set(self._ours0))

    def stop(self) -> dict:
        seconds = time.monotonic() - self._t0
        process1, all1 = self._busy()
        busy, busy_all = process1 - self._busy0[0], all1 - self._busy0[1]
        ours1, reaped1 = self._ours()
        by_label: dict[str, float] = {}
        for pid, (c, label) in ours1.items():
            by_label[label] = by_label.get(label, 0.0) + c - self._ours0.get(pid, (0.0, ""))[0]
        for label, c in reaped1.items():
            by_label[label] = by_label.get(label, 0.0) + c - self._reaped0.get(label, 0.0)
        for label, c in self.claimed.items():
            by_label[label] = by_label.get(label, 0.0) + c
            by_label[LOAD_GENERATORS] = by_label.get(LOAD_GENERATORS, 0.0) - c
        ours = sum(by_label.values())
        others1 = self._others(set(ours1))
        named: dict[str, float] = {}
        for pid, (c, name) in others1.items():
            used = c - self._others0[pid][0] if pid in self._others0 else c
            if used > 0.05:
                named[name] = named.get(name, 0.0) + used
        if seconds <= 0:
            return {"seconds": 0}
        top = sorted(named.items(), key=lambda kv: -kv[1])[:3]
        return {
            "seconds": round(seconds, 1),
            "machine_busy_cores": round(busy_all / seconds, 2),
            "ours_cores": round(ours / seconds, 2),
            # Interrupt work (loopback networking) is no process's: left out of both sides.
            "other_processes_cores": round(max(0.0, busy - ours) / seconds, 2),
            "other_top": [{"cmd": n, "cores": round(c / seconds, 3)} for n, c in top],
            "ours_by_process": {k: round(v / seconds, 2) for k, v in sorted(by_label.items(), key=lambda kv: -kv[1])
                                if v / seconds >= 0.005},
        }


class DbWork:
    """Counters of the application database: xact_commit/rollback and pg_stat_statements calls."""

    def __init__(self, client: PgClient, database: str, pgss: bool):
        self.client = client
        self.database = database
        self.pgss = pgss

    def snapshot(self) -> dict:
        row = self.client.fetchrow(
            "SELECT d.oid, s.xact_commit, s.xact_rollback, s.tup_inserted, s.tup_updated, s.tup_deleted "
            "FROM pg_stat_database s JOIN pg_database d ON d.oid = s.datid WHERE d.datname = $1",
            self.database,
        )
        snap = {k: row[k] for k in ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")}
        snap["t"] = time.time()
        if self.pgss:
            rows = self.client.fetch(
                "SELECT queryid, toplevel, query, calls, total_exec_time, rows "
                "FROM pg_stat_statements WHERE dbid = $1", row["oid"],
            )
            snap["statements"] = {(r["queryid"], r["toplevel"]): r for r in rows}
        return snap

    @staticmethod
    def classify(query: str) -> str:
        for label, pattern in RESET_PATTERNS.items():
            if pattern.search(query):
                return "reset"
        if TXN_CONTROL.match(query):
            return "transaction_control"
        if SESSION_SETUP.match(query):
            return "session_setup"
        return "sql"

    def delta(self, before: dict, after: dict, *, units: float, unit: str, top: int = 20) -> dict:
        """Per ``unit`` (fulfilled order, accepted order, request): what the database did."""
        units = units or 0
        per = (lambda x: round(x / units, 2) if units else None)
        commits = after["xact_commit"] - before["xact_commit"]
        out = {
            "unit": unit,
            "units": units,
            "window_s": round(after["t"] - before["t"], 1),
            "xact_commit": commits,
            "xact_rollback": after["xact_rollback"] - before["xact_rollback"],
            "xact_commit_per_unit": per(commits),
            "tuples_written_per_unit": per(sum(after[k] - before[k] for k in ("tup_inserted", "tup_updated", "tup_deleted"))),
        }
        if not self.pgss or "statements" not in after:
            out["statements"] = None
            return out
        calls_by_class: Counter = Counter()
        resets: Counter = Counter()
        rows = []
        for key, r in after["statements"].items():
            prev = before.get("statements", {}).get(key)
            calls = r["calls"] - (prev["calls"] if prev else 0)
            if calls <= 0:
                continue
            ms = r["total_exec_time"] - (prev["total_exec_time"] if prev else 0.0)
            if not r["toplevel"]:
                calls_by_class["nested"] += calls
                kind = "nested"
            else:
                kind = self.classify(r["query"] or "")
                calls_by_class[kind] += calls
                if kind == "reset":
                    label = next(l for l, p in RESET_PATTERNS.items() if p.search(r["query"]))
                    resets[label] += calls
            rows.append({"kind": kind, "calls": calls, "per_unit": per(calls), "exec_ms": round(ms, 1),
                         "query": " ".join((r["query"] or "").split())[:240]})
        rows.sort(key=lambda x: -x["calls"])
        toplevel = sum(v for k, v in calls_by_class.items() if k != "nested")
        out["statements"] = {
            "toplevel_calls": toplevel,
            "toplevel_per_unit": per(toplevel),
            "sql_per_unit": per(calls_by_class["sql"]),
            "reset_per_unit": per(calls_by_class["reset"]),
            # One release = one reset query string (its statements above, one implicit transaction).
            "releases_per_unit": per(max(resets.values()) if resets else 0),
            "transaction_control_per_unit": per(calls_by_class["transaction_control"]),
            "session_setup_per_unit": per(calls_by_class["session_setup"]),
            "nested_per_unit": per(calls_by_class["nested"]),
            "calls_by_kind": dict(calls_by_class),
            "reset_calls": dict(resets),
            "top": rows[:top],
        }
        return out
