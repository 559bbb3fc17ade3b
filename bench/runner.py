"""One benchmark run: set up, the scenarios in order, correctness at the end.

Order of phases (each measured phase samples pg_stat_activity and diffs the
database's counters; a settle pause lets backends flush their statistics; read and
placement at the reference client count and the paced run are profiled, see
bench.profile):

  setup      servers, migrations, admin, the Procfile's processes, products, users
  baselines  hello-world gunicorn, pgbench order transaction, bare Celery chain
  read       GET /api/inventory/products/{id} through the gateway, wrk @ each client count
  pipeline   orders through the gateway with everything running, wrk @ each client count,
             then a drain until every order is terminal
  paced      orders at a fixed rate (default: the target, 0.5 x the chain's rate), open loop
  mixed      the locust mix (tests/locustfile.py)
  placement  orders with the Celery worker and beat stopped, wrk @ each client count
  drain      the worker and beat again: how fast the placement backlog is worked off
  checks     stock conservation, nothing reserved, every order terminal, no dead letters
"""
from __future__ import annotations

import csv
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from bench import baselines, orders_db, paced, profile, wrk
from bench.api import Api, Users
from bench.monitor import ConnectionSampler, CpuAccount, DbWork
from bench.pg import PgClient, database_of, with_database
from bench.procs import ROOT, Supervisor
from bench.report import reference_clients
from bench.stack import Stack, free_port, wait_http

ADMIN_PASSWORD = "bench admin password"
WARMUP_S = 5  # seconds of unmeasured load before the read and hello-world measurements


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class Bench:
    def __init__(self, cfg: dict, sup: Supervisor, workdir: Path):
        self.cfg = cfg
        self.sup = sup
        self.workdir = workdir
        self.run_id = cfg["run_id"]
        self.stack: Stack | None = None
        self.api: Api | None = None
        self.db: PgClient | None = None  # the application database, read by the observer
        self.stats: PgClient | None = None  # the 'postgres' database, for counters
        self.work: DbWork | None = None
        self.database = None
        self.users: Users | None = None
        self.products: list[str] = []
        self.env: dict[str, str] = dict(os.environ)
        self.results: dict = {"phases": {}, "warnings": []}
        self.run_start = None
        self.py_spy: str | None = None

    # -- helpers ---------------------------------------------------------------------
    def warn(self, msg: str) -> None:
        log("WARNING: " + msg)
        self.results["warnings"].append(msg)

    @property
    def clients(self) -> list[int]:
        return self.cfg["clients"]

    def want(self, phase: str) -> bool:
        return phase in self.cfg["scenarios"]

    def settle(self) -> None:
        """Backends flush statistics when idle, at the latest 10 s later (PGSTAT_IDLE_INTERVAL)."""
        if self.work is not None and self.cfg["settle"] > 0:
            time.sleep(self.cfg["settle"])

    def measure(self, name: str, fn, *, unit: str, units) -> dict:
        """Run ``fn`` while sampling connections (and profiling, see ``profiler``); diff the database
        counters around it."""
        log(f"phase {name}")
        before = self.work.snapshot() if self.work else None
        sampler = ConnectionSampler(self.stats.url, self.database) if self.stats else None
        if sampler:
            sampler.__enter__()
        cpu = self.cpu_account()
        cpu.start()
        profiler = self.profiler(name)
        try:
            with profiler or nullcontext():
                result = fn()
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
        if profiler:
            cpu.claim(profile.CPU_LABEL, profiler.cpu_seconds)
            result["profile"] = profiler.summary(self.sup.logs)
            errors = result["profile"]["errors"]
            if errors:
                more = f" (and {len(errors) - 1} more)" if errors[1:] else ""
                self.warn(f"{name}: py-spy failed: {errors[0]}{more}")
        result["cpu"] = cpu.stop()
        self._check_cpu(name, result["cpu"])
        if sampler:
            result["connections"] = sampler.summary()
        self.settle()
        if self.work is not None:
            after = self.work.snapshot()
            result["db_work"] = self.work.delta(before, after, units=units(result), unit=unit)
        dead = self.stack.check_alive() if self.stack else []
        if dead:
            self.warn(f"processes died during {name}: {dead}")
        self.results["phases"][name] = result
        return result

    def profiler(self, name: str) -> profile.PhaseProfile | None:
        """py-spy over the phases the targets are judged on: read and placement at the reference
        client count, the paced pipeline run."""
        ref = reference_clients(self.clients)
        if not (self.py_spy and self.stack and (name in (f"read@{ref}", f"placement@{ref}")
                                                 or name.startswith("paced@"))):
            return None
        warmup = self.cfg["trim"]
        seconds = profile.window(self.cfg["duration"], warmup)
        if seconds < 1:
            self.warn(f"{name}: not profiled, the phase is too short for a window after its {warmup:g} s warm-up")
            return None
        return profile.PhaseProfile(self.sup, self.py_spy, phase=name, warmup=warmup, seconds=seconds,
                                    targets=profile.targets(self.sup, list(self.stack.celery)),
                                    out_dir=self.sup.logs / "profiles", env=self.env)

    def cpu_account(self) -> CpuAccount:
        def groups() -> dict[int, str]:
            named = {proc.pid: name for name, proc in self.sup.procs.items()}
            for server in self.sup.servers:
                named.setdefault(server.pid, server.name)
            return named

        return CpuAccount([self.stack.embedded_pg.pid] if self.stack and self.stack.embedded_pg else [], groups)

    def _check_cpu(self, name: str, cpu: dict) -> None:
        # With BENCH_URL the system under test is not ours: its CPU counts as "other" by design.
        if cpu.get("other_processes_cores", 0) > 0.1 and self.stack is not None:
            named = ", ".join(f"{t['cmd'][:60]} {t['cores']}" for t in cpu["other_top"])
            unnamed = cpu["other_processes_cores"] - sum(t["cores"] for t in cpu["other_top"])
            if unnamed > 0.1:  # processes that started and ended within the phase (another test run, ...)
                named += f"; {unnamed:.2f} by short-lived processes"
            self.warn(f"{name}: other programs used {cpu['other_processes_cores']} cores meanwhile "
                      f"({named}): its figures are disturbed")

    def cpu_of(self, name: str, fn):
        """``fn()`` with the CPU it and everything else used meanwhile, for phases not under ``measure``."""
        cpu = self.cpu_account()
        cpu.start()
        result = fn()
        result["cpu"] = cpu.stop()
        self._check_cpu(name, result["cpu"])
        return result

    def write_lines(self, name: str, lines: list[str]) -> Path:
        path = self.workdir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- setup -----------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if cfg["url"]:
            self._setup_external()
        else:
            self._setup_stack()
        self.users = Users(self.api, self.run_id, ttl_seconds=self._token_ttl())
        log(f"registering {cfg['users']} users")
        self.users.register(cfg["users"])
        self.products_file = self.write_lines("products.txt", self.products)
        if self.db is not None:
            self._wait_recipients()
            self.probe_hops()

    def _token_ttl(self) -> float:
        try:
            from config.settings import load_settings

            return float(load_settings(self.env).access_token_ttl)
        except Exception:
            return 900.0

    def _setup_stack(self) -> None:
        cfg = self.cfg
        stack = self.stack = Stack(self.sup, workdir=self.workdir, log=log)
        if cfg["profile"]:
            self.py_spy = profile.find_py_spy()
            if not self.py_spy:
                self.warn("py-spy is not installed (requirements-bench.txt): the report has no profiles")
        log("starting servers")
        stack.start_servers()
        self.env = stack.build_env()
        self._connect_db(stack.database_url, stack.pgss["enabled"])
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
        log(f"seeding {cfg['products']} products with {cfg['stock']} units each")
        for n in range(cfg["products"]):
            product = self.api.create_product(admin, sku=f"BENCH-{self.run_id}-{n:03d}", name=f"Bench product {n}",
                                              price_cents=500 + 37 * n, stock=cfg["stock"])
            self.products.append(product["id"])

    def _setup_external(self) -> None:
        cfg = self.cfg
        self.api = Api(cfg["url"])
        from bench.stack import VENV_BIN

        self.env = {**os.environ, "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        log(f"measuring the system at {cfg['url']} (BENCH_URL): placement and the chain baseline need "
            "control of its workers and are skipped; its processes count as 'other programs' in the CPU figures")
        if os.environ.get("DATABASE_URL"):
            url = os.environ["DATABASE_URL"]
            admin = PgClient(with_database(url, "postgres"))
            try:
                pgss = "pg_stat_statements" in (admin.fetchval("SHOW shared_preload_libraries") or "")
                if pgss:
                    admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                admin.close()
            self._connect_db(url, pgss)
            self.run_start = orders_db.db_now(self.db)
        else:
            self.warn("no DATABASE_URL with BENCH_URL: database-side figures (fulfilment, connections, "
                      "database work, correctness) are not measured")
        email, password = os.environ.get("BENCH_ADMIN_EMAIL") or os.environ.get("ADMIN_EMAIL"), \
            os.environ.get("BENCH_ADMIN_PASSWORD") or os.environ.get("ADMIN_PASSWORD")
        if email and password:
            admin = self.api.login(email, password)["access_token"]
            for n in range(cfg["products"]):
                product = self.api.create_product(admin, sku=f"BENCH-{self.run_id}-{n:03d}",
                                                  name=f"Bench product {n}", price_cents=500 + 37 * n,
                                                  stock=cfg["stock"])
                self.products.append(product["id"])
        else:
            self.warn("no BENCH_ADMIN_EMAIL/BENCH_ADMIN_PASSWORD: ordering the catalog's existing products")
            self.products = [p["id"] for p in self.api.products(100) if p.get("available", 1) > 1000]
            if not self.products:
                raise RuntimeError("no product with stock to order; give admin credentials to seed some")
        cfg["scenarios"] = [s for s in cfg["scenarios"] if s not in ("placement",)]

    def _connect_db(self, url: str, pgss: bool) -> None:
        self.database = database_of(url)
        self.db = PgClient(url)
        self.stats = PgClient(with_database(url, "postgres"))
        self.work = DbWork(self.stats, self.database, pgss)

    def _wait_recipients(self) -> None:
        """Notifications need each user's user.registered to be consumed first."""
        deadline = time.monotonic() + 120
        ids = self.users.ids()
        while time.monotonic() < deadline:
            n = self.db.fetchval("SELECT count(*) FROM notifications.recipients WHERE user_id = ANY($1::uuid[])", ids)
            if n >= len(ids):
                return
            time.sleep(0.5)
        self.warn(f"only {n} of {len(ids)} users are known to notifications after 120 s")

    def tokens_file(self) -> Path:
        self.users.fresh(min_validity=self.cfg["duration"] * 3 + 300)
        return self.write_lines("tokens.txt", self.users.tokens())

    def probe_pipeline(self) -> None:
        """One order through, so the workers are consuming before a measured phase."""
        token = self.users.people[0]["access"]
        order = self.api.place(token, self.products[0], 1)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.api.order(token, order["id"])["status"] in orders_db.TERMINAL:
                return
            time.sleep(0.2)
        raise RuntimeError("a probe order did not finish within 90 s; is the worker running?\n"
                           + (self.sup.procs["worker"].log_tail() if "worker" in self.sup.procs else ""))

    def hops(self) -> list[dict]:
        """The chain's length: the tasks a probe order really caused, else the walk over ROUTES."""
        try:
            from config.settings import load_settings

            walked = baselines.pipeline_hops(load_settings(self.env).fulfilment_delay_seconds)
        except Exception as exc:
            self.warn(f"could not walk workers.relay.ROUTES ({exc!r})")
            walked = None
        observed = self.results.get("probe", {}).get("hops")
        self.results["pipeline_hops_routes"] = walked
        hops = observed or walked or [{"event": "?", "task": "?", "queue": "default", "delayed": False}] * 6
        if observed and walked and len(observed) != len(walked):
            self.warn(f"a probe order caused {len(observed)} tasks, the walk over ROUTES counts {len(walked)}: "
                      "the chain uses the observed count")
        self.results["pipeline_hops"] = hops
        return hops

    def probe_hops(self) -> None:
        """Three probe orders through the idle pipeline: the tasks (inbox rows) one order causes."""
        if self.db is None:
            return
        t0 = orders_db.db_now(self.db)
        for n in range(3):
            self.probe_pipeline()
        orders_db.drain(self.db, t0, timeout=60)
        t1 = orders_db.db_now(self.db)
        consumed = orders_db.inbox_between(self.db, t0, t1)
        self.results["probe"] = {"orders": 3, "consumed": consumed,
                                 "hops": baselines.observed_hops(consumed, 3)}

    # -- baselines ---------------------------------------------------------------------
    def run_baselines(self) -> None:
        out = self.results.setdefault("baselines", {})
        cfg = self.cfg
        gateway_line = self.stack.http_entries.get("gateway") if self.stack else None
        # (b) hello world
        try:
            if gateway_line is None:
                from bench.stack import procfile

                gateway_line = procfile()["gateway"]
            command = baselines.hello_command(gateway_line)
            port = free_port()
            env = {**self.env, "GATEWAY_PORT": str(port), "PORT": str(port), "SERVICE_NAME": "bench-hello",
                   "PYTHONPATH": str(ROOT)}
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            log("baseline: hello-world gunicorn")
            self.sup.start("hello", ["/bin/sh", "-c", command], env=env)
            try:
                wait_http(self.sup, "hello", f"http://127.0.0.1:{port}/", 30)
                hello_file = self.write_lines("hello.txt", ["x"])
                self.warm_up(f"http://127.0.0.1:{port}/", "plain", hello_file)
                result = self.cpu_of("hello", lambda: wrk.run(
                    self.sup, name="wrk-hello", url=f"http://127.0.0.1:{port}/", connections=cfg["hello_connections"],
                    duration=cfg["baseline_duration"], env=self.env, mode="plain", products_file=hello_file))
                result["command"] = command
                result["settings"] = {k: env.get(k) for k in ("WEB_CONCURRENCY", "GUNICORN_THREADS")}
                out["hello"] = result
                log(f"  hello @{cfg['hello_connections']}: {result['rps']} req/s, p99 {result['latency_ms']['p99']} ms")
            finally:
                self.sup.stop("hello")
        except Exception as exc:
            self.warn(f"hello-world baseline failed: {exc}")
        # (a) pgbench
        if self.db is not None:
            try:
                log("baseline: pgbench order transaction")
                out["pgbench"] = self.cpu_of("pgbench", lambda: baselines.pgbench(
                    self.sup, pgbench_path=self.stack.pgbench_path() if self.stack else "pgbench",
                    url=self.db.url, workdir=self.workdir, clients=self.clients, duration=cfg["baseline_duration"],
                    products=cfg["products"], env=self.env, log=log))
            except Exception as exc:
                self.warn(f"pgbench baseline failed: {exc}")
        # (c) bare chain, with the real workers stopped so it has the machine the pipeline has
        hops = self.hops()
        if self.stack is not None and "worker" in self.stack.celery:
            try:
                log(f"baseline: bare Celery chain of {len(hops)} hops")
                self.stack.stop_workers()
                out["chain"] = self.cpu_of("chain", lambda: baselines.chain(
                    self.sup, worker_command=baselines.chain_worker_command(self.stack.celery["worker"]),
                    env=self.env, hops=hops, duration=cfg["baseline_duration"], in_flight=cfg["chain_in_flight"],
                    log=log))
            except Exception as exc:
                self.warn(f"chain baseline failed: {exc}")
            finally:
                self.stack.start_workers()
                self.probe_pipeline()

    # -- scenarios ---------------------------------------------------------------------
    def warm_up(self, url: str, mode: str, products_file: Path) -> None:
        """An unmeasured wrk run first: the first seconds of a fresh process (imports, caches,
        pooled connections) are not its steady state, and were a large share of a 10 s run."""
        wrk.run(self.sup, name=f"wrk-warmup-{mode}", url=url, connections=max(self.clients), duration=WARMUP_S,
                env=self.env, mode=mode, products_file=products_file)

    def run_read(self) -> None:
        self.warm_up(self.api.base, "read", self.products_file)
        for c in self.clients:
            def go(c=c):
                r = wrk.run(self.sup, name=f"wrk-read-{c}", url=self.api.base, connections=c,
                            duration=self.cfg["duration"], env=self.env, mode="read", products_file=self.products_file)
                log(f"  read @{c}: {r['rps']} req/s, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
                    f"errors {r['errors']}")
                return r
            self.measure(f"read@{c}", go, unit="request", units=lambda r: r["requests"])

    def _place_wrk(self, tag: str, c: int, tokens_file: Path) -> dict:
        """``tokens_file`` is written before the measured phase: refreshing tokens is not its load."""
        return wrk.run(self.sup, name=f"wrk-{tag}-{c}", url=self.api.base, connections=c,
                       duration=self.cfg["duration"], env=self.env, mode="place", products_file=self.products_file,
                       tokens_file=tokens_file, run_id=f"{self.run_id}-{tag}{c}", keys=self.cfg["keys"],
                       max_qty=self.cfg["max_qty"])

    def _pipeline_phase(self, name: str, load) -> None:
        users = self.users.ids()

        def go():
            t0 = orders_db.db_now(self.db) if self.db else None
            r = load()
            if self.db is None:
                return {"http": r}
            t1 = orders_db.db_now(self.db)
            d = orders_db.drain(self.db, t0, timeout=self.cfg["drain_timeout"], log=log,
                                alive=lambda: not (self.stack and self.stack.check_alive()))
            if not d["drained"]:
                self.warn(f"{name}: not drained after {d['seconds']} s: {d['left']}")
            t2 = orders_db.db_now(self.db)
            w = orders_db.pipeline_window(self.db, t0, t1, users, trim_s=self.cfg["trim"])
            result = {"http": r, "db": w, "drain": d, "consumed": orders_db.inbox_between(self.db, t0, t2)}
            log(f"  {name}: accepted {w['accepted_per_s']}/s, fulfilled {w['fulfilled_per_s']}/s "
                f"(gap {w['backlog_gap']}), done {w['done_per_s']}/s (gap {w['done_gap']}), placement p99 {r['latency_ms']['p99']} ms, "
                f"to-fulfilled p50 {w['placement_to_fulfilled']['p50_ms']} p99 {w['placement_to_fulfilled']['p99_ms']} ms, "
                f"drain {d['seconds']} s")
            return result

        self.measure(name, go, unit="fulfilled order",
                     units=lambda res: res.get("db", {}).get("final_status", {}).get("fulfilled", 0))

    def run_pipeline(self) -> None:
        if self.stack and not self.stack.workers_running():
            self.stack.start_workers()
            self.probe_pipeline()
        for c in self.clients:
            tokens = self.tokens_file()
            self._pipeline_phase(f"pipeline@{c}", lambda c=c, tokens=tokens: self._place_wrk("pipeline", c, tokens))

    def paced_rate(self) -> float | None:
        if self.cfg["paced_rate"]:
            return float(self.cfg["paced_rate"])
        chain = self.results.get("baselines", {}).get("chain", {})
        if chain.get("chains_per_s"):
            return round(0.5 * chain["chains_per_s"], 1)
        return None

    def run_paced(self) -> None:
        rate = self.paced_rate()
        if not rate:
            self.warn("paced pipeline skipped: no rate (no chain baseline and no --paced-rate)")
            return
        self.tokens_file()  # refreshes tokens that could expire during the run
        tokens = self.users.tokens()

        def load():
            r = paced.run(base_url=self.api.base, tokens=tokens, products=self.products, rate=rate,
                          duration=self.cfg["duration"], run_id=self.run_id, keys=self.cfg["keys"],
                          max_qty=self.cfg["max_qty"])
            return r

        self._pipeline_phase(f"paced@{rate:g}/s", load)

    def run_mixed(self) -> None:
        locust = Path(sys.executable).parent / "locust"
        if not locust.exists():
            self.warn("locust is not installed in the venv: mixed scenario skipped")
            return
        prefix = self.workdir / "locust"
        cfg = self.cfg

        def go():
            argv = [str(locust), "-f", str(ROOT / "tests" / "locustfile.py"), "--headless", "-H", self.api.base,
                    "-u", str(cfg["locust_users"]), "-r", str(max(1, cfg["locust_users"] // 5)),
                    "-t", f"{max(5, round(cfg['duration']))}s", "--csv", str(prefix), "--only-summary",
                    "--exit-code-on-error", "0", "--loglevel", "WARNING", "--stop-timeout", "10"]
            self.sup.run("locust", argv, env={**self.env, "PYTHONPATH": str(ROOT)}, timeout=cfg["duration"] + 120)
            rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))
            out = {"users": cfg["locust_users"], "requests": {}}
            for row in rows:
                entry = {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                         "rps": round(float(row["Requests/s"]), 2), "p50_ms": _num(row.get("50%")),
                         "p99_ms": _num(row.get("99%"))}
                key = "total" if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}"
                out["requests"][key] = entry
            total = out["requests"].get("total", {})
            log(f"  mixed: {total.get('rps')} req/s, {total.get('failures')} failures, p99 {total.get('p99_ms')} ms")
            if self.db is not None:
                d = orders_db.drain(self.db, self.run_start, timeout=cfg["drain_timeout"], log=log)
                out["drain"] = d
            return out

        self.measure("mixed", go, unit="request", units=lambda r: r["requests"].get("total", {}).get("requests", 0))

    def run_placement(self) -> None:
        if self.stack is None:
            return
        users = self.users.ids()
        self.stack.stop_workers()
        first = None
        for c in self.clients:
            tokens = self.tokens_file()

            def go(c=c, tokens=tokens):
                t0 = orders_db.db_now(self.db)
                r = self._place_wrk("placement", c, tokens)
                t1 = orders_db.db_now(self.db)
                placed = orders_db.placed_between(self.db, t0, t1, users)
                log(f"  placement @{c}: {r['ok_rps']} accepted/s, p50 {r['latency_ms']['p50']} ms, "
                    f"p99 {r['latency_ms']['p99']} ms, errors {r['errors']}")
                return {"http": r, "db": placed, "t0": t0.isoformat(), "t1": t1.isoformat()}
            res = self.measure(f"placement@{c}", go, unit="accepted order", units=lambda r: r["db"]["accepted"])
            first = first or res["t0"]
        # Work the backlog off: the workers alone, no HTTP load.
        from datetime import datetime

        t0 = datetime.fromisoformat(first)

        def drain():
            started = orders_db.db_now(self.db)
            self.stack.start_workers()
            d = orders_db.drain(self.db, t0, timeout=self.cfg["backlog_timeout"], log=log,
                                alive=lambda: not self.stack.check_alive())
            ended = orders_db.db_now(self.db)
            rate = orders_db.drain_rate(self.db, t0, started, users, started=started)
            if not d["drained"]:
                self.warn(f"placement backlog not drained after {d['seconds']} s: {d['left']}")
            log(f"  backlog drain: {rate['fulfilled']} orders fulfilled at {rate['fulfilled_per_s']}/s, "
                f"done (notifications included) at {rate['done_per_s']}/s")
            return {"drain": d, "rate": rate, "consumed": orders_db.inbox_between(self.db, started, ended)}

        self.measure("backlog-drain", drain, unit="fulfilled order", units=lambda r: r["rate"]["fulfilled"])

    def run_checks(self) -> None:
        if self.db is None:
            return
        d = orders_db.drain(self.db, self.run_start, timeout=self.cfg["drain_timeout"], log=log)
        checks = orders_db.correctness(self.db, self.run_start)
        if self.stack is not None:
            from bench.mailsink import received

            checks["mail_received"] = {"count": received(self.stack.mail_count_file)}
        checks["final_drain"] = d
        self.results["checks"] = checks
        failed = [k for k, v in checks.items() if isinstance(v, dict) and v.get("pass") is False]
        log("correctness: " + ("all checks pass" if not failed else f"FAILED: {failed}"))

    def close(self) -> None:
        for client in (self.db, self.stats):
            if client is not None:
                client.close()


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
