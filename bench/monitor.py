"""What a phase costs: PostgreSQL connections (sampled), CPU by process (psutil), database work (counters).

Connections and counters are read through the ``postgres`` database (see bench.pg), so the
sampling adds no transactions or statements to the application database's figures.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter

import psutil

from bench.pg import PgClient

NOT_APP = ("bench-monitor", "pgbench", "bench-sampler")  # connections that are the bench's
LOAD_GENERATORS = "load generators (wrk, pgbench, locust)"
PROFILER = "profiler (py-spy)"
BENCH_PG = "postgres (bench's queries)"  # backends of the bench's own connections (application_name bench-*)
HARNESS = ("bench", LOAD_GENERATORS, PROFILER, BENCH_PG)  # not the system under test: left out of its CPU

# What asyncpg sends when a pooled connection is released (Connection.reset, _get_reset_query).
RESET = re.compile(r"^\s*(RESET\s+ALL\b|CLOSE\s+ALL\b|UNLISTEN\s+\*|DISCARD\s+ALL\b)|pg_advisory_unlock_all\s*\(", re.I)
TXN_CONTROL = re.compile(r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.I)
SESSION_SETUP = re.compile(r"^\s*(SET|SHOW|SELECT\s+(pg_catalog\.)?set_config)\b", re.I)


class ConnectionSampler:
    """Samples pg_stat_activity of the application database every ``interval`` s, on a thread."""

    def __init__(self, url: str, database: str, interval: float = 0.15):
        self.url, self.database, self.interval = url, database, interval
        self.samples: list[tuple[Counter, Counter]] = []  # (connections, active ones) by application_name
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def __enter__(self) -> "ConnectionSampler":
        self._client = PgClient(self.url, application_name="bench-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _loop(self) -> None:
        sql = ("SELECT coalesce(application_name, '') AS app, state = 'active' AS active, count(*) AS n "
               "FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' GROUP BY 1, 2")
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                by_app, active = Counter(), Counter()
                for r in self._client.fetch(sql, self.database, timeout=5):
                    by_app[r["app"]] += r["n"]
                    active[r["app"]] += r["n"] if r["active"] else 0
                self.samples.append((by_app, active))
            except Exception as exc:  # keep sampling; report the last error
                self.error = repr(exc)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def summary(self) -> dict:
        peak_total, at_peak, peak_active, by_app, bench = 0, {}, 0, Counter(), Counter()
        for conns, active in self.samples:
            app = {k: v for k, v in conns.items() if not k.startswith(NOT_APP)}
            if sum(app.values()) > peak_total:
                peak_total, at_peak = sum(app.values()), app
            peak_active = max(peak_active, sum(v for k, v in active.items() if not k.startswith(NOT_APP)))
            for k, v in conns.items():
                peaks = bench if k.startswith(NOT_APP) else by_app
                peaks[k] = max(peaks[k], v)
        return {"samples": len(self.samples), "interval_s": self.interval, "peak_total": peak_total,
                "peak_active": peak_active, "at_peak": dict(sorted(at_peak.items())),
                "peak_by_application_name": dict(sorted(by_app.items())),
                "peak_bench_connections": dict(bench), "error": self.error}


class CpuAccount:
    """CPU used during a phase: the machine's busy time, the run's own processes by name, and the rest.

    Another program busy on a 2-core machine changes every figure, so each phase says how much
    CPU went elsewhere: others = machine busy - ours. Ours is this process and its descendants,
    each named by the process group it is in (``names()``: {pgid: name}; the bench's children
    each lead one), and the embedded PostgreSQL (``pg_pid``, detached); children that exited
    meanwhile show in their parent's children times (the bench's: the load generators; the
    postmaster's: its backends). ``claim`` moves reaped helpers (py-spy) out of the load generators.
    PostgreSQL's processes are told apart by ``pg_backends()`` ({pid: (backend_type, application_name)},
    from pg_stat_activity): client backends are "postgres", the bench's own ``BENCH_PG``, the rest
    (postmaster, checkpointer, WAL writer, autovacuum, I/O workers) "postgres (background)".
    """

    def __init__(self, pg_pid: int | None, names, pg_backends=dict):
        self.roots = [os.getpid()] + ([pg_pid] if pg_pid else [])
        self.names, self.pg_backends = names, pg_backends
        self.claimed: dict[str, float] = {}

    def _pg_label(self, backend) -> str:
        if backend is None or backend[0] != "client backend":
            return "postgres (background)"
        return BENCH_PG if (backend[1] or "").startswith("bench") else "postgres"

    def claim(self, label: str, seconds: float) -> None:
        self.claimed[label] = self.claimed.get(label, 0.0) + seconds

    def _snapshot(self):
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system  # what processes' times add up to; interrupts are no one's
        busy_all = busy + t.irq + t.softirq + t.steal
        me, groups = os.getpid(), self.names()
        try:
            backends = self.pg_backends() if len(self.roots) > 1 else {}
        except Exception:  # an unreadable pg_stat_activity: PostgreSQL's CPU is all "background"
            backends = {}
        ours: dict[int, tuple[float, str]] = {}
        reaped: Counter = Counter()
        for root in self.roots:
            try:
                top = psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    c = p.cpu_times()
                    label = (self._pg_label(backends.get(p.pid)) if root != me else "bench" if p.pid == me
                             else groups.get(os.getpgid(p.pid), "bench"))
                except (psutil.Error, OSError):
                    continue
                ours[p.pid] = (c.user + c.system, label)
                # Exited children: the bench's are the load generators, the postmaster's its backends.
                parent = LOAD_GENERATORS if p.pid == me else "postgres" if p.pid == root != me else label
                reaped[parent] += c.children_user + c.children_system
        others = {}
        for p in psutil.process_iter(["cmdline", "name", "cpu_times"]):
            c = p.info["cpu_times"]
            if p.pid not in ours and c is not None:
                others[p.pid] = (c.user + c.system, (" ".join(p.info["cmdline"] or []) or p.info["name"] or "?")[:100])
        return time.monotonic(), busy, busy_all, ours, reaped, others

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self) -> dict:
        t0, busy0, all0, ours0, reaped0, others0 = self._before
        t1, busy1, all1, ours1, reaped1, others1 = self._snapshot()
        seconds = t1 - t0
        by_label: Counter = Counter()
        for pid, (c, label) in ours1.items():
            by_label[label] += c - ours0.get(pid, (0.0,))[0]
        for label, c in reaped1.items():
            by_label[label] += c - reaped0.get(label, 0.0)
        for label, c in self.claimed.items():
            by_label[label] += c
            by_label[LOAD_GENERATORS] -= c
        ours = sum(by_label.values())
        named: Counter = Counter()
        for pid, (c, name) in others1.items():
            used = c - others0[pid][0] if pid in others0 else c
            if used > 0.05:
                named[name] += used
        if seconds <= 0:
            return {"seconds": 0}
        per_s = lambda x, nd=2: round(x / seconds, nd)  # noqa: E731
        return {"seconds": round(seconds, 1), "machine_busy_cores": per_s(all1 - all0), "ours_cores": per_s(ours),
                "system_cores": per_s(sum(v for k, v in by_label.items() if k not in HARNESS)),
                "other_processes_cores": per_s(max(0.0, busy1 - busy0 - ours)),
                "other_top": [{"cmd": n, "cores": per_s(c, 3)} for n, c in named.most_common(3)],
                "ours_by_process": {k: per_s(v) for k, v in by_label.most_common() if v / seconds >= 0.005},
                "seconds_by_process": {k: round(v, 3) for k, v in by_label.most_common()}}


def per_unit(cpu: dict | None, units, unit: str) -> dict | None:
    """CPU ms per ``unit`` from a CpuAccount result: the system under test's processes summed (``HARNESS``
    left out) and one by one; ``all_ms`` also counts the load generators, the bench and the profiler."""
    seconds = (cpu or {}).get("seconds_by_process")
    if not seconds or not units:
        return None
    ms = lambda s: round(1000 * s / units, 3)  # noqa: E731
    return {"unit": unit, "units": units, "system_ms": ms(sum(v for k, v in seconds.items() if k not in HARNESS)),
            "all_ms": ms(sum(seconds.values())),
            "by_process_ms": {k: ms(v) for k, v in seconds.items() if k not in HARNESS},
            "harness_ms": {k: ms(v) for k, v in seconds.items() if k in HARNESS}}


class DbWork:
    """Counters of the application database: xact_commit/rollback and pg_stat_statements calls."""

    def __init__(self, client: PgClient, database: str, pgss: bool):
        self.client, self.database, self.pgss = client, database, pgss

    def snapshot(self) -> dict:
        row = self.client.fetchrow(
            "SELECT d.oid, s.xact_commit, s.xact_rollback, s.tup_inserted + s.tup_updated + s.tup_deleted AS tuples "
            "FROM pg_stat_database s JOIN pg_database d ON d.oid = s.datid WHERE d.datname = $1", self.database)
        snap = {**row, "t": time.time()}
        if self.pgss:
            snap["statements"] = {(r["queryid"], r["toplevel"]): r for r in self.client.fetch(
                "SELECT queryid, toplevel, query, calls, total_exec_time FROM pg_stat_statements WHERE dbid = $1",
                row["oid"])}
        return snap

    @staticmethod
    def classify(query: str) -> str:
        return ("reset" if RESET.search(query) else "transaction_control" if TXN_CONTROL.match(query)
                else "session_setup" if SESSION_SETUP.match(query) else "sql")

    def delta(self, before: dict, after: dict, *, units: float, unit: str, top: int = 20) -> dict:
        """Per ``unit`` (fulfilled order, accepted order, request): what the database did."""
        units = units or 0
        per = lambda x: round(x / units, 2) if units else None  # noqa: E731
        commits = after["xact_commit"] - before["xact_commit"]
        out = {"unit": unit, "units": units, "window_s": round(after["t"] - before["t"], 1), "xact_commit": commits,
               "xact_rollback": after["xact_rollback"] - before["xact_rollback"],
               "xact_commit_per_unit": per(commits), "tuples_written_per_unit": per(after["tuples"] - before["tuples"]),
               "statements": None}
        if "statements" not in after:
            return out
        kinds, resets, rows = Counter(), Counter(), []
        for key, r in after["statements"].items():
            prev = before.get("statements", {}).get(key) or {"calls": 0, "total_exec_time": 0.0}
            calls = r["calls"] - prev["calls"]
            if calls <= 0:
                continue
            query = r["query"] or ""
            kind = self.classify(query) if r["toplevel"] else "nested"
            kinds[kind] += calls
            if kind == "reset":
                resets[" ".join(query.split())[:60]] += calls
            rows.append({"kind": kind, "calls": calls, "per_unit": per(calls),
                         "exec_ms": round(r["total_exec_time"] - prev["total_exec_time"], 1),
                         "query": " ".join(query.split())[:240]})
        rows.sort(key=lambda x: -x["calls"])
        toplevel = sum(v for k, v in kinds.items() if k != "nested")
        out["statements"] = {
            "toplevel_calls": toplevel, "toplevel_per_unit": per(toplevel), "sql_per_unit": per(kinds["sql"]),
            "reset_per_unit": per(kinds["reset"]),
            # One release = one reset query string (its statements, one implicit transaction).
            "releases_per_unit": per(max(resets.values(), default=0)),
            "transaction_control_per_unit": per(kinds["transaction_control"]),
            "session_setup_per_unit": per(kinds["session_setup"]), "nested_per_unit": per(kinds["nested"]),
            "calls_by_kind": dict(kinds), "reset_calls": dict(resets), "top": rows[:top]}
        return out
