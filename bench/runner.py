"""``python -m bench`` (``make bench``, arguments through ``BENCH_ARGS``): one benchmark run.

Phases, in order. Each measured phase samples pg_stat_activity, accounts CPU by process and
diffs the database's counters, then pauses (--settle) so backends flush their statistics;
read and placement at the reference client count and the paced run are profiled (py-spy).

  setup      servers, migrations, admin, the Procfile's processes, products, users, probe orders
  baselines  hello-world gunicorn, pgbench order transaction, bare Celery chain unbatched and batched
  read       GET /api/inventory/products/{id} through the gateway, wrk @ each client count
  pipeline   orders through the gateway, everything running, wrk @ each client count, then a drain
  paced      orders at a fixed rate (default: the target, 1.0 x the unbatched chain's rate), open loop
  overload   orders through the gateway, wrk @ 64 clients (--overload-clients), everything running:
             accepted (202) and refused (503 + Retry-After), accepted orders' latency, none lost
  mixed      the locust mix (tests/locustfile.py)
  placement  orders with the Celery worker and beat stopped and admission control off, wrk @ each
             client count; then the backlog drain: the workers again, no HTTP load
  checks     stock conserved, nothing reserved, every order terminal, no dead letters, outbox
             published, notifications sent

Environment: BENCH_DURATION, BENCH_CLIENTS, BENCH_SCENARIOS, BENCH_PACED_RATE, BENCH_PROFILE=0,
BENCH_KEEP=1 set the options' defaults; DATABASE_URL / REDIS_URL use these servers instead of
embedded ones. Every setting of the system comes from the environment as for ``make run``,
except the production defaults the bench sets (``bench.stack``).

Exit status: 0 when the run completed and the correctness checks pass (the targets are
reported, not enforced), 1 otherwise, 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from contextlib import nullcontext
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import psutil

from bench import baselines, load, orders_db, profile, report
from bench.api import Api, Users
from bench.mailsink import received
from bench.monitor import PROFILER, ConnectionSampler, CpuAccount, DbWork, per_unit
from bench.pg import PgClient, database_of, with_database
from bench.procs import ROOT, Supervisor, ignore_signals, install_signal_handlers
from bench.stack import Stack, free_port, wait_http
from config.settings import load_settings

SCENARIOS = ["baselines", "read", "storefront", "pipeline", "paced", "overload", "mixed", "placement"]
# Concurrent visitors of the storefront scenario (whatever --clients says: the crowd sizes).
STOREFRONT_VISITORS = (8, 32, 64)
RESULTS = ROOT / "bench" / "results"
ADMIN_PASSWORD = "bench admin password"
WARMUP_S = 5  # unmeasured load before the read and hello-world measurements
STOCK = 10_000_000  # units per seeded product
MAX_QTY = 3  # quantity per order line is 1..MAX_QTY
HELLO_CONNECTIONS = 32
CHAIN_IN_FLIGHT = 64
BACKLOG_TIMEOUT = 600  # seconds for the workers to work off the placement backlog


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None) -> dict:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=float(env("BENCH_DURATION") or 30),
                   help="seconds per measured run (BENCH_DURATION, default 30; baselines: at most 15)")
    p.add_argument("--clients", default=env("BENCH_CLIENTS") or "8,32,64",
                   help="connections / concurrent clients (BENCH_CLIENTS, default 8,32,64)")
    p.add_argument("--scenarios", default=env("BENCH_SCENARIOS") or ",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)} (BENCH_SCENARIOS)")
    p.add_argument("--users", type=int, default=100, help="customers to register; orders rotate over their tokens")
    p.add_argument("--products", type=int, default=50, help=f"products to seed, {STOCK:,} units each")
    p.add_argument("--paced-rate", type=float, default=float(env("BENCH_PACED_RATE") or 0),
                   help="orders/s of the open-loop pipeline run (default: the target, 1.0 x the unbatched chain)")
    p.add_argument("--overload-clients", type=int, default=64, help="closed-loop clients of the overload run")
    p.add_argument("--locust-users", type=int, default=20)
    p.add_argument("--drain-timeout", type=float, default=300,
                   help="seconds to wait for a pipeline run's orders to finish")
    p.add_argument("--settle", type=float, default=11.0,
                   help="pause after each measured phase so backends flush their statistics (PostgreSQL flushes "
                        "an idle backend's at most 10 s late)")
    p.add_argument("--trim", type=float, default=None, help="warm-up seconds left out of pipeline rates and "
                   "profiles (default: a fifth of --duration, at most 2)")
    p.add_argument("--no-profile", action="store_true", default=env("BENCH_PROFILE") == "0",
                   help="no py-spy profiles of read and placement at the reference client count and the paced run "
                        "(BENCH_PROFILE=0)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON and Markdown reports")
    p.add_argument("--keep", action="store_true", default=env("BENCH_KEEP") == "1",
                   help="keep the work folder (logs, data) instead of deleting it (BENCH_KEEP=1)")
    a = p.parse_args(argv)
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    if set(scenarios) - set(SCENARIOS):
        p.error(f"unknown scenarios: {sorted(set(scenarios) - set(SCENARIOS))} (known: {SCENARIOS})")
    return {"run_id": uuid.uuid4().hex[:8], "duration": a.duration, "baseline_duration": min(a.duration, 15.0),
            "clients": [int(c) for c in a.clients.split(",") if c.strip()], "scenarios": scenarios,
            "users": a.users, "products": a.products, "stock": STOCK, "max_qty": MAX_QTY,
            "paced_rate": a.paced_rate or None, "overload_clients": a.overload_clients,
            "hello_connections": HELLO_CONNECTIONS, "chain_in_flight": CHAIN_IN_FLIGHT, "locust_users": a.locust_users,
            "drain_timeout": a.drain_timeout, "backlog_timeout": BACKLOG_TIMEOUT, "settle": a.settle,
            "trim": a.trim if a.trim is not None else min(2.0, a.duration / 5), "profile": not a.no_profile,
            "out": a.out, "keep": a.keep}


class Bench:
    def __init__(self, cfg: dict, sup: Supervisor, workdir: Path):
        self.cfg, self.sup, self.workdir, self.run_id = cfg, sup, workdir, cfg["run_id"]
        self.clients: list[int] = cfg["clients"]
        self.stack = Stack(sup, workdir=workdir, log=log)
        self.env: dict[str, str] = dict(os.environ)
        self.db: PgClient | None = None  # the application database, read by the observer
        self.stats: PgClient | None = None  # the 'postgres' database, for counters
        self.results: dict = {"phases": {}, "warnings": []}
        self.py_spy = profile.find_py_spy() if cfg["profile"] else None

    def warn(self, msg: str) -> None:
        log("WARNING: " + msg)
        self.results["warnings"].append(msg)

    def write_lines(self, name: str, lines: list[str]) -> Path:
        path = self.workdir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- measuring -------------------------------------------------------------------------
    def cpu_account(self) -> CpuAccount:
        """CPU by process between its ``start`` and ``stop``: each child by its process group's name, the
        embedded servers, PostgreSQL's backends told from its background processes and the bench's queries."""
        return CpuAccount(self.stack.embedded_pg.pid if self.stack.embedded_pg else None, lambda: {
            **{s.pid: s.name for s in self.sup.servers}, **{p.pid: n for n, p in self.sup.procs.items()}},
            pg_backends=lambda: {r["pid"]: (r["backend_type"], r["application_name"]) for r in self.stats.fetch(
                "SELECT pid, backend_type, application_name FROM pg_stat_activity")})

    def check_cpu(self, name: str, c: dict) -> None:
        if c.get("other_processes_cores", 0) > 0.1:
            named = ", ".join(f"{t['cmd'][:60]} {t['cores']}" for t in c["other_top"])
            if (unnamed := c["other_processes_cores"] - sum(t["cores"] for t in c["other_top"])) > 0.1:
                named += f"; {unnamed:.2f} by short-lived processes"  # started and ended within the phase
            self.warn(f"{name}: other programs used {c['other_processes_cores']} cores meanwhile ({named}): "
                      "its figures are disturbed")

    def measure(self, name: str, fn, *, unit: str | None = None, units=None) -> dict:
        """``fn()`` with the CPU every process used meanwhile (and a profile, see ``profiler``). With a
        ``unit``, a phase: connections sampled, and after a settle pause the database's counters and the
        CPU per ``units(result)``; it goes into the results' phases."""
        if unit:
            log(f"phase {name}")
            before = self.work.snapshot()
        cpu, prof = self.cpu_account(), self.profiler(name)
        # The sampler's connection stays open until the CPU is counted, so its backend is told apart.
        with ConnectionSampler(self.stats.url, self.database) if unit else nullcontext() as sampler:
            cpu.start()
            with prof or nullcontext():
                result = fn()
            if prof:
                cpu.claim(PROFILER, prof.cpu_seconds)
            result["cpu"] = c = cpu.stop()
        if prof:
            result["profile"] = prof.summary(self.sup.logs)
            if errors := result["profile"]["errors"]:
                more = f" (and {len(errors) - 1} more)" if errors[1:] else ""
                self.warn(f"{name}: py-spy failed: {errors[0]}{more}")
        self.check_cpu(name, c)
        if not unit:
            return result
        result["connections"] = sampler.summary()
        time.sleep(self.cfg["settle"])  # backends flush statistics when idle, at the latest 10 s later
        n = units(result)
        result["cpu_per_unit"] = per_unit(c, n, unit)
        result["db_work"] = self.work.delta(before, self.work.snapshot(), units=n, unit=unit)
        if dead := self.stack.check_alive():
            self.warn(f"processes died during {name}: {dead}")
        self.results["phases"][name] = result
        return result

    def profiler(self, name: str) -> profile.PhaseProfile | None:
        """py-spy over the phases the targets are judged on: read and placement at the reference
        client count, the paced pipeline run."""
        ref = report.reference_clients(self.clients)
        if not self.py_spy or not (name in (f"read@{ref}", f"placement@{ref}") or name.startswith("paced@")):
            return None
        warmup = self.cfg["trim"]
        if (seconds := profile.window(self.cfg["duration"], warmup)) < 1:
            self.warn(f"{name}: not profiled, the phase is too short for a window after its {warmup:g} s warm-up")
            return None
        return profile.PhaseProfile(self.sup, self.py_spy, phase=name, warmup=warmup, seconds=seconds,
                                    targets=profile.targets(self.sup, list(self.stack.celery)),
                                    out_dir=self.sup.logs / "profiles", env=self.env)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, stack = self.cfg, self.stack
        if cfg["profile"] and not self.py_spy:
            self.warn("py-spy is not installed (requirements-bench.txt): the report has no profiles")
        log("starting servers")
        stack.start_servers()
        self.env = stack.build_env()
        self.results["cpu_not_covered"] = [f"{what} (the server in {var})" for what, var, server in (
            ("PostgreSQL", "DATABASE_URL", stack.embedded_pg), ("Redis", "REDIS_URL", stack.embedded_redis))
            if not server]
        self.database = database_of(stack.database_url)
        self.db, self.stats = PgClient(stack.database_url), PgClient(with_database(stack.database_url, "postgres"))
        self.work = DbWork(self.stats, self.database, stack.pgss["enabled"])
        if not stack.pgss["enabled"]:
            self.warn(f"pg_stat_statements unavailable: {stack.pgss['reason']}")
        stack.start_mail_sink()
        log("migrating")
        stack.migrate()
        admin_email = f"bench-admin-{self.run_id}@example.com"
        stack.create_admin(admin_email, ADMIN_PASSWORD)
        log(f"starting {', '.join(stack.http_entries)} and {', '.join(stack.celery)} from the Procfile")
        stack.start_http()
        stack.start_workers()
        self.api = Api(stack.gateway_url)
        self.run_start = orders_db.db_now(self.db)
        admin = self.api.login(admin_email, ADMIN_PASSWORD)["access_token"]
        log(f"seeding {cfg['products']} products with {STOCK} units each")
        self.products = [self.api.create_product(admin, sku=f"BENCH-{self.run_id}-{n:03d}", name=f"Bench product {n}",
                                                 price_cents=500 + 37 * n, stock=STOCK)["id"]
                         for n in range(cfg["products"])]
        self.products_file = self.write_lines("products.txt", self.products)
        self.users = Users(self.api, self.run_id, ttl_seconds=float(load_settings(self.env).access_token_ttl))
        log(f"registering {cfg['users']} users")
        self.users.register(cfg["users"])
        deadline, ids = time.monotonic() + 120, self.users.ids()  # notifications must know each user first
        while (n := self.db.fetchval("SELECT count(*) FROM notifications.recipients WHERE user_id = ANY($1::uuid[])",
                                     ids)) < len(ids):
            if time.monotonic() > deadline:
                self.warn(f"only {n} of {len(ids)} users are known to notifications after 120 s")
                break
            time.sleep(0.5)
        # Three probe orders through the idle pipeline: the tasks (inbox rows) one order causes.
        t0 = orders_db.db_now(self.db)
        for _ in range(3):
            self.probe_pipeline()
        orders_db.drain(self.db, t0, timeout=60)
        consumed = orders_db.inbox_between(self.db, t0, orders_db.db_now(self.db))
        self.results["probe"] = {"orders": 3, "consumed": consumed, "hops": baselines.observed_hops(consumed, 3)}

    def probe_pipeline(self) -> None:
        """One order through, so the workers are consuming before a measured phase."""
        token = self.users.people[0]["access"]
        order = self.api.place(token, self.products[0], 1)
        deadline = time.monotonic() + 90
        while self.api.order(token, order["id"])["status"] not in orders_db.TERMINAL:
            if time.monotonic() > deadline:
                raise RuntimeError("a probe order did not finish within 90 s; is the worker running?\n"
                                   + (self.sup.procs["worker"].log_tail() if "worker" in self.sup.procs else ""))
            time.sleep(0.2)

    def hops(self) -> list[dict]:
        """The chain's length: the tasks a probe order really caused, cross-checked with the walk over ROUTES."""
        try:
            walked = baselines.pipeline_hops(load_settings(self.env).fulfilment_delay_seconds)
        except Exception as exc:
            self.warn(f"could not walk workers.relay.ROUTES ({exc!r})")
            walked = None
        observed = self.results.get("probe", {}).get("hops")
        if observed and walked and len(observed) != len(walked):
            self.warn(f"a probe order caused {len(observed)} tasks, the walk over ROUTES counts {len(walked)}: "
                      "the chain uses the observed count")
        self.results["pipeline_hops_routes"] = walked
        self.results["pipeline_hops"] = hops = observed or walked or [{"task": "?", "queue": "default"}] * 6
        return hops

    def tokens_file(self) -> Path:
        """Tokens valid for the whole phase, refreshed before it: refreshing is not its load."""
        self.users.fresh(min_validity=self.cfg["duration"] * 3 + 300)
        return self.write_lines("tokens.txt", self.users.tokens())

    # -- baselines -------------------------------------------------------------------------
    def run_baselines(self) -> None:
        out, cfg = self.results.setdefault("baselines", {}), self.cfg
        try:  # (b) hello world
            command = baselines.hello_command(self.stack.http_entries["gateway"])
            port = free_port()
            env = {**self.env, "GATEWAY_PORT": str(port), "PORT": str(port), "SERVICE_NAME": "bench-hello",
                   "PYTHONPATH": str(ROOT)}
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            log("baseline: hello-world gunicorn")
            self.sup.start("hello", ["/bin/sh", "-c", command], env=env)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_http(self.sup, "hello", url, 30)
                hello_file = self.write_lines("hello.txt", ["x"])
                self.warm_up(url, "plain", hello_file)
                h = out["hello"] = self.measure("hello", lambda: load.wrk(
                    self.sup, name="wrk-hello", url=url, connections=HELLO_CONNECTIONS,
                    duration=cfg["baseline_duration"], env=self.env, mode="plain", products_file=hello_file))
                h.update(command=command, settings={k: env.get(k) for k in ("WEB_CONCURRENCY", "GUNICORN_THREADS")},
                         cpu_per_unit=per_unit(h["cpu"], h["requests"], "request"))
                log(f"  hello @{HELLO_CONNECTIONS}: {h['rps']} req/s, p99 {h['latency_ms']['p99']} ms")
            finally:
                self.sup.stop("hello")
        except Exception as exc:
            self.warn(f"hello-world baseline failed: {exc}")
        try:  # (a) pgbench
            log("baseline: pgbench order transaction")
            out["pgbench"] = self.measure("pgbench", lambda: baselines.pgbench(
                self.sup, pgbench_path=self.stack.pgbench_path(), url=self.db.url, workdir=self.workdir,
                clients=self.clients, duration=cfg["baseline_duration"], products=cfg["products"], env=self.env,
                log=log))
            out["pgbench"]["cpu_per_unit"] = per_unit(out["pgbench"]["cpu"], out["pgbench"]["transactions"],
                                                      "transaction")
        except Exception as exc:
            self.warn(f"pgbench baseline failed: {exc}")
        hops = self.hops()
        if "worker" not in self.stack.celery:
            return
        try:  # (c) bare chain, unbatched then batched, with the real workers stopped: the machine is the pipeline's
            log(f"baseline: bare Celery chain of {len(hops)} hops, unbatched and batched")
            self.stack.stop_workers()
            for key, batch in (("chain", 1), ("chain_batched", load_settings(self.env).event_batch_max)):
                out[key] = baselines.chain(
                    self.sup, worker_command=baselines.chain_worker_command(self.stack.celery["worker"]),
                    env=self.env, hops=hops, duration=cfg["baseline_duration"], in_flight=CHAIN_IN_FLIGHT,
                    batch=batch, account=self.cpu_account, log=log)
                self.check_cpu(key, out[key]["cpu"] or {})
        except Exception as exc:
            self.warn(f"chain baseline failed: {exc}")
        finally:
            self.stack.start_workers()
            self.probe_pipeline()

    # -- scenarios -------------------------------------------------------------------------
    def warm_up(self, url: str, mode: str, products_file: Path) -> None:
        """Unmeasured load first: the first seconds of a fresh process (imports, caches, pooled
        connections) are not its steady state, and were a large share of a 10 s run."""
        load.wrk(self.sup, name=f"wrk-warmup-{mode}", url=url, connections=max(self.clients), duration=WARMUP_S,
                 env=self.env, mode=mode, products_file=products_file)

    def run_read(self) -> None:
        self.warm_up(self.api.base, "read", self.products_file)
        for c in self.clients:
            r = self.measure(f"read@{c}", lambda c=c: load.wrk(
                self.sup, name=f"wrk-read-{c}", url=self.api.base, connections=c, duration=self.cfg["duration"],
                env=self.env, mode="read", products_file=self.products_file), unit="request",
                units=lambda r: r["requests"])
            log(f"  read @{c}: {r['rps']} req/s, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
                f"errors {r['errors']}")

    def run_storefront(self) -> None:
        """Visitors browsing the storefront through the gateway (catalog, a search, product pages,
        the sign-in page), each page a gateway thread waiting on the web console while the
        console's own API calls come back through the gateway's console listener."""
        self.warm_up(self.api.base, "pages", self.products_file)
        for c in STOREFRONT_VISITORS:
            r = self.measure(f"storefront@{c}", lambda c=c: load.wrk(
                self.sup, name=f"wrk-storefront-{c}", url=self.api.base, connections=c,
                duration=self.cfg["duration"], env=self.env, mode="pages", products_file=self.products_file),
                unit="page", units=lambda r: r["requests"])
            fivexx = sum(n for code, n in r["statuses"].items() if code >= 500)
            log(f"  storefront @{c}: {r['rps']} pages/s, p50 {r['latency_ms']['p50']} ms, p99 "
                f"{r['latency_ms']['p99']} ms, statuses {r['statuses']}, 5xx {fivexx}, socket errors "
                f"{r['socket_errors']}")

    def place(self, tag: str, c: int, tokens_file: Path) -> dict:
        return load.wrk(self.sup, name=f"wrk-{tag}-{c}", url=self.api.base, connections=c,
                        duration=self.cfg["duration"], env=self.env, mode="place", products_file=self.products_file,
                        tokens_file=tokens_file, run_id=f"{self.run_id}-{tag}{c}", max_qty=MAX_QTY)

    def pipeline_phase(self, name: str, generate) -> None:
        """Orders from ``generate()`` with everything running, then a drain; rates and latencies from the database."""
        users = self.users.ids()
        if not self.stack.workers_running():
            self.stack.start_workers()
            self.probe_pipeline()

        def go():
            t0 = orders_db.db_now(self.db)
            r = generate()
            t1 = orders_db.db_now(self.db)
            d = orders_db.drain(self.db, t0, timeout=self.cfg["drain_timeout"],
                                alive=lambda: not self.stack.check_alive())
            if not d["drained"]:
                self.warn(f"{name}: not drained after {d['seconds']} s: {d['left']}")
            w = orders_db.pipeline_window(self.db, t0, t1, users, trim_s=self.cfg["trim"])
            log(f"  {name}: accepted {w['accepted_per_s']}/s, fulfilled {w['fulfilled_per_s']}/s (gap "
                f"{w['backlog_gap']}), done {w['done_per_s']}/s (gap {w['done_gap']}), placement p99 "
                f"{r['latency_ms']['p99']} ms, to-fulfilled p50 {w['placement_to_fulfilled']['p50_ms']} p99 "
                f"{w['placement_to_fulfilled']['p99_ms']} ms, drain {d['seconds']} s")
            return {"http": r, "db": w, "drain": d,
                    "consumed": orders_db.inbox_between(self.db, t0, orders_db.db_now(self.db))}

        self.measure(name, go, unit="fulfilled order", units=lambda r: r["db"]["final_status"].get("fulfilled", 0))

    def run_pipeline(self) -> None:
        for c in self.clients:
            tokens = self.tokens_file()
            self.pipeline_phase(f"pipeline@{c}", lambda c=c, tokens=tokens: self.place("pipeline", c, tokens))

    def run_overload(self) -> None:
        """Closed loop above what the pipeline sustains: admission control accepts (202) what it can fulfil
        within ORDER_LATENCY_BUDGET_SECONDS and refuses the rest (503 + Retry-After)."""
        c, tokens = self.cfg["overload_clients"], self.tokens_file()
        self.pipeline_phase(f"overload@{c}", lambda: self.place("overload", c, tokens))

    def run_paced(self) -> None:
        chain = self.results.get("baselines", {}).get("chain", {}).get("chains_per_s")
        if not (rate := self.cfg["paced_rate"] or (chain and round(report.TARGETS["pipeline_ratio"] * chain, 1))):
            self.warn("paced pipeline skipped: no rate (no chain baseline and no --paced-rate)")
            return
        self.tokens_file()  # refreshes tokens that could expire during the run
        self.pipeline_phase(f"paced@{rate:g}/s", lambda: load.paced(
            base_url=self.api.base, tokens=self.users.tokens(), products=self.products, rate=rate,
            duration=self.cfg["duration"], run_id=self.run_id, max_qty=MAX_QTY))

    def run_mixed(self) -> None:
        if not (Path(sys.executable).parent / "locust").exists():
            self.warn("locust is not installed in the venv: mixed scenario skipped")
            return

        def go():
            out = load.locust(self.sup, base_url=self.api.base, users=self.cfg["locust_users"],
                              duration=self.cfg["duration"], env=self.env, prefix=self.workdir / "locust")
            total = out["requests"].get("total", {})
            log(f"  mixed: {total.get('rps')} req/s, {total.get('failures')} failures, p99 {total.get('p99_ms')} ms")
            return {**out, "drain": orders_db.drain(self.db, self.run_start, timeout=self.cfg["drain_timeout"])}

        self.measure("mixed", go, unit="request", units=lambda r: r["requests"].get("total", {}).get("requests", 0))

    def run_placement(self) -> None:
        users, first = self.users.ids(), None
        self.stack.stop_workers()
        # Placement alone: admission control would refuse orders once the first waited half the budget.
        self.stack.restart_http("orders", ORDER_LATENCY_BUDGET_SECONDS="0")
        for c in self.clients:
            tokens = self.tokens_file()

            def go(c=c, tokens=tokens):
                t0 = orders_db.db_now(self.db)
                r = self.place("placement", c, tokens)
                t1 = orders_db.db_now(self.db)
                log(f"  placement @{c}: {r['ok_rps']} accepted/s, p50 {r['latency_ms']['p50']} ms, "
                    f"p99 {r['latency_ms']['p99']} ms, errors {r['errors']}")
                return {"http": r, "db": orders_db.placed_between(self.db, t0, t1, users), "t0": t0, "t1": t1}

            t0 = self.measure(f"placement@{c}", go, unit="accepted order", units=lambda r: r["db"]["accepted"])["t0"]
            first = first or t0

        def drain():  # the workers alone work the backlog off, no HTTP load
            started = orders_db.db_now(self.db)
            self.stack.start_workers()
            d = orders_db.drain(self.db, first, timeout=BACKLOG_TIMEOUT, alive=lambda: not self.stack.check_alive())
            rate = orders_db.drain_rate(self.db, first, started, users, started=started)
            if not d["drained"]:
                self.warn(f"placement backlog not drained after {d['seconds']} s: {d['left']}")
            log(f"  backlog drain: {rate['fulfilled']} orders fulfilled at {rate['fulfilled_per_s']}/s, "
                f"done (notifications included) at {rate['done_per_s']}/s")
            return {"drain": d, "rate": rate, "consumed": orders_db.inbox_between(self.db, started,
                                                                                  orders_db.db_now(self.db))}

        self.measure("backlog-drain", drain, unit="fulfilled order", units=lambda r: r["rate"]["fulfilled"])
        self.stack.restart_http("orders")

    def run_checks(self) -> None:
        d = orders_db.drain(self.db, self.run_start, timeout=self.cfg["drain_timeout"])
        checks = orders_db.correctness(self.db, self.run_start)
        checks["mail_received"] = {"count": len(received(self.stack.mail_count_file))}
        storefront = {name: p for name, p in self.results.get("phases", {}).items() if name.startswith("storefront@")}
        if storefront:  # a crowd at the front door gets no 5xx
            fivexx = {name: sum(n for code, n in p["statuses"].items() if int(code) >= 500)
                      for name, p in storefront.items()}
            checks["storefront_no_5xx"] = {"pass": not any(fivexx.values()), "5xx": fivexx}
        checks["final_drain"] = d
        self.results["checks"] = checks
        failed = [k for k, v in checks.items() if v.get("pass") is False]
        log("correctness: " + ("all checks pass" if not failed else f"FAILED: {failed}"))

    def close(self) -> None:
        for client in (self.db, self.stats):
            if client is not None:
                client.close()


# -- what was measured on ------------------------------------------------------------------------

def _out(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=str(ROOT))
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(bench: Bench) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    dirty = _out(["git", "status", "--porcelain", "--untracked-files=no"])
    diff = _out(["git", "diff", "HEAD"])
    info = {"cores": os.cpu_count(), "cpu_model": (re.findall(r"model name\s*:\s*(.*)", cpuinfo) or [""])[0],
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "wrk": (_out(["wrk", "--version"]).splitlines() or ["?"])[0].split(" Copyright")[0],
            # The code measured: HEAD, and a digest of uncommitted changes to tracked files.
            "git": _out(["git", "rev-parse", "--short", "HEAD"]) + (" (uncommitted changes)" if dirty else ""),
            "git_dirty_files": dirty.splitlines(),
            "git_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
            "loadavg_at_start": os.getloadavg(), "packages": {}}
    for name in ("flask", "gunicorn", "celery", "kombu", "asyncpg", "pgdbm", "redis", "locust"):
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        info["postgres"] = bench.db.fetchval("SHOW server_version")
        info["postgres_max_connections"] = int(bench.db.fetchval("SHOW max_connections"))
        import redis

        with redis.Redis.from_url(bench.env["REDIS_URL"]) as client:
            info["redis"] = client.info("server")["redis_version"]
    except Exception:
        pass
    return info


def settings(bench: Bench) -> dict:
    stack, env = bench.stack, bench.env
    out: dict = {"processes": {**stack.http_entries, **stack.celery}, "bench_overrides": stack.bench_settings,
                 "procfile_entries_not_started": stack.skipped, "ports": stack.ports, "pg_stat_statements": stack.pgss,
                 "embedded": {"postgres": stack.embedded_pg is not None, "redis": stack.embedded_redis is not None}}
    try:
        from config.celery import celery_config

        out["system"] = load_settings(env).redacted()
        cc = celery_config(load_settings(env))
        out["celery"] = {**cc, "broker_url": "(redacted)" if "@" in str(cc.get("broker_url")) else cc.get("broker_url")}
    except Exception as exc:
        out["settings_error"] = repr(exc)
    procfile = " ".join(out["processes"].values())
    default = lambda name: (m := re.search(r"\$\{" + name + r":-(\d+)\}", procfile)) and m.group(1)  # noqa: E731
    out.update(web_concurrency=env.get("WEB_CONCURRENCY") or default("WEB_CONCURRENCY") or "2",
               gunicorn_threads=env.get("GUNICORN_THREADS") or "8",
               celery_concurrency=env.get("CELERY_CONCURRENCY") or default("CELERY_CONCURRENCY"),
               environment={k: env[k] for k in sorted(env) if k.startswith((
                   "DB_", "GUNICORN_", "CELERY_", "WEB_", "RATE_LIMIT", "LOG_", "REGISTRY_", "FULFILMENT", "OUTBOX",
                   "RESERVATION", "INVENTORY_", "UPSTREAM_"))})
    return out


def connection_budget(bench: Bench) -> dict:
    """Pool-owning processes (gunicorn workers, Celery pool children) x their DB_POOL_MAX, and the idle count."""
    owners, budget, detail = 0, 0, []
    for name in [*bench.stack.http_entries, "worker"]:
        if name == "web":
            continue  # the web console holds no pool
        try:
            children = psutil.Process(bench.sup.procs[name].pid).children()
        except (KeyError, psutil.Error):
            continue
        # The Procfile names each process with SERVICE_NAME, which sets its default pool ceiling.
        pool_max = load_settings({**bench.env, "SERVICE_NAME": name}).db_pool_max
        owners, budget = owners + len(children), budget + len(children) * pool_max
        detail.append(f"{name} {len(children)} x {pool_max}")
    idle = bench.stats.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' "
        "AND application_name NOT LIKE 'bench%' AND application_name <> 'pgbench'", bench.database)
    return {"pool_owners": owners, "budget": budget, "detail": ", ".join(detail), "idle_connections": idle}


def keep_logs(sup: Supervisor, dest: Path) -> dict:
    """Tails of every process log beside the report, and how many error lines each had; the profiles."""
    pattern = re.compile(r"\[(error|critical)\s*\]|Traceback|\bERROR\b|\bCRITICAL\b|\"level\": \"(error|critical)\"")
    summary = {}
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(sup.logs.glob("*.log")):
        errors, tail = 0, []
        with open(path, errors="replace") as fh:
            for line in fh:
                errors += bool(pattern.search(line))
                tail.append(line)
                if len(tail) > 400:
                    del tail[:200]
        (dest / path.name).write_text("".join(tail[-200:]))
        summary[path.stem] = {"errors": errors, "bytes": path.stat().st_size}
    if (sup.logs / "profiles").exists():
        shutil.copytree(sup.logs / "profiles", dest / "profiles", dirs_exist_ok=True)
    return summary


def ensure_wrk() -> None:
    """wrk is a Debian package: install it when missing and we may (root with apt-get), else say how."""
    if not shutil.which("wrk") and os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: apt-get install -y wrk")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                 "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
        if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu), then run again")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    ensure_wrk()
    install_signal_handlers()
    out_dir = Path(cfg.pop("out"))
    keep = cfg.pop("keep")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    os.chmod(workdir, 0o755)  # the embedded PostgreSQL runs as its own user
    sup = Supervisor(workdir, remove_workdir=not keep)
    sup.start_reaper()
    bench = Bench(cfg, sup, workdir)
    results = bench.results
    results.update(run_id=cfg["run_id"], started_at=stamp, config=cfg,
                   command=" ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]))
    started, rc = time.monotonic(), 0
    log(f"run {cfg['run_id']}: work folder {workdir}")
    try:
        bench.setup()
        results.update(machine=machine(bench), settings=settings(bench), connection_budget=connection_budget(bench))
        for phase in SCENARIOS:
            if phase not in cfg["scenarios"]:
                continue
            try:
                getattr(bench, f"run_{phase}")()
            except Exception as exc:
                bench.warn(f"phase {phase} failed: {exc!r}")
                log(traceback.format_exc())
                if bench.stack.celery and not bench.stack.workers_running():
                    bench.stack.start_workers()
        bench.run_checks()
    except KeyboardInterrupt:
        results["error"], rc = "interrupted (Ctrl-C)", 130
    except SystemExit as exc:
        results["error"] = f"stopped by a signal (exit {exc.code})"
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        results["error"], rc = f"{exc!r}\n{traceback.format_exc()}", 1
        log(traceback.format_exc())
    finally:
        ignore_signals()
        try:
            if not results.get("machine"):
                results["machine"] = machine(bench)
            bench.close()
        finally:
            sup.stop_all()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["logs"] = keep_logs(sup, out_dir / f"{stamp}-logs")
    checks = results.get("checks") or {}
    if rc == 0 and (not checks or any(v.get("pass") is False for v in checks.values())):
        rc = 1
    try:
        results["evaluation"] = report.evaluate(results, cfg["clients"])
    except Exception as exc:
        results["evaluation_error"] = repr(exc)
    try:
        from bench import plots  # matplotlib: requirements-bench.txt

        results["plots"] = plots.render(results, out_dir / f"{stamp}-plots")
    except Exception as exc:
        results["warnings"].append(f"no plots: {exc!r}")
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    try:
        text = report.markdown(results)
    except Exception:
        text = f"# Benchmark {cfg['run_id']}\n\nThe report could not be rendered:\n\n```\n{traceback.format_exc()}```\n"
    (out_dir / f"{stamp}.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    log(f"wrote {out_dir / (stamp + '.json')} and {out_dir / (stamp + '.md')} in {results['elapsed_s']:.0f} s")
    if keep:
        log(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return rc
