"""The chaos run: ``python -m bench.chaos`` (``make chaos``; a short profile runs in CI).

Starts the whole system on embedded PostgreSQL and Redis in a temporary folder,
puts a steady order load on the gateway, and meanwhile, one after another:
SIGKILLs a Celery pool child, the whole Celery worker (then starts it again), a
gunicorn worker of each service; freezes Redis (SIGSTOP/SIGCONT, a hang as in a
network partition); restarts Redis with its data wiped (every queued message lost);
freezes PostgreSQL's process tree for longer than the retry budget; stops the SMTP
server; restarts beat. When the load has stopped and the system has drained, it
checks from the client's own record and the database that every accepted order is
terminal, stock is conserved, no order was fulfilled twice, exactly one mail went
out per (event, channel, recipient), and no dead letter is left; it prints a table
of the faults and one of the invariants, and exits 1 if any invariant failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import urllib3

from bench.pg import PgClient
from bench.procs import ROOT, Supervisor, install_signal_handlers, kill_group
from bench.stack import HTTP_NAMES, Stack, free_port

RESULTS = ROOT / "bench" / "results"
FAULTS = ("pool-child", "worker", "gunicorn", "redis-freeze", "redis-wipe", "postgres-freeze", "smtp", "beat")
TERMINAL = ("fulfilled", "rejected", "cancelled")
ADMIN_PASSWORD = "chaos-admin-password"


@dataclass(frozen=True)
class Profile:
    """Durations (seconds) of one run. ``full`` is ``make chaos``; ``short`` runs in CI."""

    name: str
    warmup: float
    gap: float  # load between two faults
    redis_freeze: float
    postgres_freeze: float
    smtp_down: float
    worker_down: float
    tail: float  # load after the last fault
    drain_timeout: float
    rate: float  # orders per second, all clients together
    # The system's settings for the run: the retry budget (the backoff cap) is well below
    # the PostgreSQL freeze, and the sweeps are brisk so that the drain is quick.
    settings: dict = field(default_factory=dict)


_SWEEPS = {"RECONCILE_SECONDS": "5", "ORDER_REANNOUNCE_AFTER_SECONDS": "15",
           "ORDER_REANNOUNCE_MAX_SECONDS": "60", "NOTIFICATION_REDELIVER_AFTER_SECONDS": "20",
           "OUTBOX_SWEEP_SECONDS": "2", "CELERY_VISIBILITY_TIMEOUT": "120"}
PROFILES = {
    "full": Profile("full", warmup=15, gap=20, redis_freeze=40, postgres_freeze=240, smtp_down=60,
                    worker_down=5, tail=20, drain_timeout=600, rate=6,
                    settings={**_SWEEPS, "TASK_RETRY_BACKOFF_MAX_SECONDS": "60"}),
    "short": Profile("short", warmup=8, gap=6, redis_freeze=10, postgres_freeze=25, smtp_down=10,
                     worker_down=2, tail=6, drain_timeout=240, rate=4,
                     settings={**_SWEEPS, "TASK_RETRY_BACKOFF_MAX_SECONDS": "4"}),
}


def log(message: str) -> None:
    sys.stderr.write(f"[chaos {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- the client's own record -------------------------------------------------------------
@dataclass
class Attempt:
    started: float
    outcome: str  # accepted | unavailable (a clean 503) | failed (anything else)
    order_id: str | None = None
    detail: str = ""


class Load:
    """Clients placing orders through the gateway at a steady pace, as a careful client
    would: one Idempotency-Key per order, retried (twice, a second apart) on a 503 or a
    dropped connection; about one order in ten is cancelled right after it was accepted."""

    def __init__(self, gateway: str, tokens: list[str], products: list[dict], *, rate: float, t0: float):
        self.gateway = gateway
        self.tokens = tokens
        self.products = products
        self.rate = rate
        self.t0 = t0
        self.attempts: list[Attempt] = []
        self.cancels = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for i, token in enumerate(self.tokens):
            thread = threading.Thread(target=self._run, args=(i, token), name=f"client-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, index: int, token: str) -> None:
        rnd = random.Random(index)
        http = urllib3.PoolManager(maxsize=2, retries=False, timeout=urllib3.Timeout(connect=2, read=20))
        interval = len(self.tokens) / self.rate
        next_at = time.monotonic() + rnd.random() * interval
        while not self.stop.is_set():
            self.stop.wait(max(0.0, next_at - time.monotonic()))
            if self.stop.is_set():
                break
            next_at += interval
            lines = rnd.sample(self.products, k=rnd.choice((1, 1, 2)))
            body = {"items": [{"product_id": p["id"], "quantity": rnd.randint(1, 3)} for p in lines]}
            attempt = self._place(http, token, body)
            with self.lock:
                self.attempts.append(attempt)
            if attempt.order_id and rnd.random() < 0.1:
                self._cancel(http, token, attempt.order_id)

    def _request(self, http, method: str, path: str, token: str, body: dict | None = None,
                 key: str | None = None) -> tuple[int | None, dict | None, str]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        try:
            r = http.request(method, self.gateway + path, headers=headers,
                             body=json.dumps(body).encode() if body is not None else None)
        except urllib3.exceptions.HTTPError as exc:
            return None, None, type(exc).__name__
        data = None
        if "json" in r.headers.get("Content-Type", ""):
            try:
                data = json.loads(r.data)
            except ValueError:
                pass
        return r.status, data, ""

    def _place(self, http, token: str, body: dict) -> Attempt:
        started = time.monotonic() - self.t0
        key = str(uuid.uuid4())
        status, data, error = None, None, ""
        for attempt in range(3):
            status, data, error = self._request(http, "POST", "/api/orders", token, body, key)
            if status in (200, 201, 202) and data and data.get("id"):
                return Attempt(started, "accepted", data["id"])
            if status is not None and status != 503:
                break
            self.stop.wait(1.0)
        if status == 503 and data and data.get("status") == 503:
            return Attempt(started, "unavailable", detail="503")
        return Attempt(started, "failed", detail=str(status or error))

    def _cancel(self, http, token: str, order_id: str) -> None:
        status, _, error = self._request(http, "POST", f"/api/orders/{order_id}/cancel", token)
        with self.lock:
            self.cancels[str(status or error)] += 1


# -- faults ------------------------------------------------------------------------------
@dataclass
class Fault:
    name: str
    started: float
    duration: float = 0.0
    note: str = ""


class Chaos:
    def __init__(self, profile: Profile, *, workdir: Path):
        self.profile = profile
        self.workdir = workdir
        self.sup = Supervisor(workdir, remove_workdir=True)
        self.stack = Stack(self.sup, workdir=workdir, log=log)
        self.mail_log = workdir / "mail.jsonl"
        self.faults: list[Fault] = []
        self.t0 = 0.0

    # -- setup --------------------------------------------------------------------------
    def start(self) -> None:
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
            os.environ.pop(name, None)  # the run freezes and wipes its servers: embedded ones only
        os.environ.update({"ACCESS_TOKEN_TTL_SECONDS": "7200", "RATE_LIMIT_DEFAULT": "1000000/minute",
                           "RATE_LIMIT_LOGIN": "1000000/minute", **self.profile.settings})
        self.sup.start_reaper()
        self.stack.start_servers()
        self.env = self.stack.build_env()
        self.start_mail_sink()
        self.stack.migrate()
        self.stack.create_admin("admin@chaos.example.com", ADMIN_PASSWORD)
        self.stack.start_http()
        self.stack.start_workers()

    def start_mail_sink(self) -> None:
        from bench.stack import _wait_port

        self.sup.start("smtp-sink", [
            sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.stack.smtp_port}",
            "-c", "bench.mailsink.RecordingSink", str(self.mail_log),
        ], env=self.env)
        _wait_port(self.stack.smtp_port, 20, self.sup.procs["smtp-sink"])

    def prepare(self, clients: int) -> tuple[list[str], list[dict]]:
        http = urllib3.PoolManager(retries=False, timeout=20)
        gw = self.stack.gateway_url

        def call(method, path, body=None, token=None):
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            r = http.request(method, gw + path, body=json.dumps(body).encode() if body else None, headers=headers)
            if r.status >= 300:
                raise RuntimeError(f"{method} {path} answered {r.status}: {r.data[:300]!r}")
            return json.loads(r.data)

        admin = call("POST", "/api/auth/login", {"email": "admin@chaos.example.com",
                                                 "password": ADMIN_PASSWORD})["access_token"]
        products = []
        for i in range(6):
            stock = 40 if i == 0 else 100_000  # one scarce product: some orders are rejected
            products.append(call("POST", "/api/inventory/products", {
                "sku": f"CHAOS-{i}-{uuid.uuid4().hex[:6]}", "name": f"Chaos product {i}",
                "price_cents": 100 + i, "stock": stock}, token=admin))
        tokens = [call("POST", "/api/users", {"email": f"chaos-{i}-{uuid.uuid4().hex[:6]}@example.com",
                                              "name": f"Client {i}", "password": "chaos password"})["access_token"]
                  for i in range(clients)]
        return tokens, products

    # -- the faults -------------------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _children(self, name: str) -> list[psutil.Process]:
        try:
            return psutil.Process(self.sup.procs[name].pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill_pool_child(self) -> Fault:
        fault = Fault("SIGKILL a Celery pool child", self._now())
        children = self._children("worker")
        if children:
            victim = random.choice(children)
            victim.send_signal(signal.SIGKILL)
            fault.note = f"pid {victim.pid}"
        return fault

    def _kill_and_start(self, label: str, name: str, down: float) -> Fault:
        """SIGKILL a Celery process and everything it forked, then start it again."""
        fault = Fault(label, self._now())
        proc = self.sup.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.popen.wait(10)
        kill_group(proc.pid, timeout=5)
        time.sleep(down)
        self.stack.start_workers_named([name])
        fault.duration = self._now() - fault.started
        return fault

    def kill_worker(self) -> Fault:
        return self._kill_and_start("SIGKILL the Celery worker, start it again", "worker", self.profile.worker_down)

    def kill_gunicorn_workers(self) -> Fault:
        fault = Fault("SIGKILL a gunicorn worker of each service", self._now())
        killed = []
        for name in HTTP_NAMES:
            children = self._children(name)
            if children:
                children[0].send_signal(signal.SIGKILL)
                killed.append(name)
        fault.note = ", ".join(killed)
        return fault

    def _tree(self, pid: int) -> list[psutil.Process]:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]

    def freeze(self, label: str, pid: int, seconds: float) -> Fault:
        fault = Fault(label, self._now())
        tree = self._tree(pid)
        for proc in tree:
            proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            for proc in tree:
                try:
                    proc.send_signal(signal.SIGCONT)
                except psutil.NoSuchProcess:
                    pass
        fault.duration = self._now() - fault.started
        fault.note = f"SIGSTOP/SIGCONT of {len(tree)} processes"
        return fault

    def wipe_redis(self) -> Fault:
        from devtools import embedded

        fault = Fault("restart Redis with its data wiped", self._now())
        old = self.stack.embedded_redis
        os.kill(old.pid, signal.SIGKILL)
        old.stop(timeout=10)
        self.sup.forget_server(old)
        for path in old.data_dir.iterdir():
            if path.name.startswith(("appendonly", "dump")) or path.name.endswith((".aof", ".rdb")):
                if path.is_dir():
                    import shutil

                    shutil.rmtree(path)
                else:
                    path.unlink()
        server = embedded.start_redis(old.data_dir, persistent=True)
        self.sup.add_server(server)
        self.stack.embedded_redis = server
        fault.duration = self._now() - fault.started
        return fault

    def stop_smtp(self, seconds: float) -> Fault:
        fault = Fault("stop the SMTP server", self._now())
        self.sup.stop("smtp-sink", timeout=10)
        time.sleep(seconds)
        self.start_mail_sink()
        fault.duration = self._now() - fault.started
        return fault

    def restart_beat(self) -> Fault:
        return self._kill_and_start("SIGKILL beat, start it again", "beat", 0)

    def steps(self) -> dict:
        p = self.profile
        return {
            "pool-child": self.kill_pool_child,
            "worker": self.kill_worker,
            "gunicorn": self.kill_gunicorn_workers,
            "redis-freeze": lambda: self.freeze("freeze Redis", self.stack.embedded_redis.pid, p.redis_freeze),
            "redis-wipe": self.wipe_redis,
            "postgres-freeze": lambda: self.freeze("freeze PostgreSQL", self.stack.embedded_pg.pid,
                                                   p.postgres_freeze),
            "smtp": lambda: self.stop_smtp(p.smtp_down),
            "beat": self.restart_beat,
        }

    def run_faults(self, names: list[str]) -> None:
        p = self.profile
        steps = self.steps()
        time.sleep(p.warmup)
        for step in (steps[n] for n in names):
            fault = step()
            log(f"{fault.name}: at {fault.started:.0f}s for {fault.duration:.0f}s {fault.note}")
            self.faults.append(fault)
            time.sleep(p.gap)
        time.sleep(p.tail)

    # -- judging -------------------------------------------------------------------------------
    def drain(self, db: PgClient) -> dict:
        deadline = time.monotonic() + self.profile.drain_timeout
        while True:
            state = self.backlog(db)
            if not any(state.values()) or time.monotonic() > deadline or self.stack.check_alive():
                return state  # a process that died will not drain anything more
            time.sleep(2)

    def backlog(self, db: PgClient) -> dict:
        return {
            "orders not terminal": db.fetchval(
                "SELECT count(*) FROM orders.orders WHERE status NOT IN ('fulfilled', 'rejected', 'cancelled')"),
            "stock effects unconfirmed": db.fetchval(
                "SELECT count(*) FROM orders.orders WHERE status IN ('fulfilled', 'cancelled') "
                "AND stock_settled_at IS NULL"),
            "units reserved": db.fetchval("SELECT coalesce(sum(reserved), 0) FROM inventory.products"),
            "notifications pending": db.fetchval(
                "SELECT count(*) FROM notifications.notifications WHERE status = 'pending'"),
            "events without their mail": db.fetchval(_UNNOTIFIED),
            "events unpublished": sum(db.fetchval(
                f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") for s in ("users", "orders", "inventory")),
        }

    def judge(self, db: PgClient, load: Load, backlog: dict) -> list[tuple[str, bool, str]]:
        accepted = [a.order_id for a in load.attempts if a.outcome == "accepted"]
        rows = db.fetch("SELECT id::text AS id, status FROM orders.orders")
        status = {r["id"]: r["status"] for r in rows}
        missing = [o for o in accepted if o not in status]
        open_ = [o for o, s in status.items() if s not in TERMINAL]
        stock = db.fetch(
            "SELECT p.id, p.on_hand, p.reserved, "
            "(SELECT coalesce(sum(delta), 0) FROM inventory.stock_movements m "
            "  WHERE m.product_id = p.id AND m.order_id IS NULL) AS stocked FROM inventory.products p")
        sold = {r["product_id"]: r["q"] for r in db.fetch(
            "SELECT l.product_id, sum(l.quantity) AS q FROM orders.order_lines l "
            "JOIN orders.orders o ON o.id = l.order_id WHERE o.status = 'fulfilled' GROUP BY l.product_id")}
        unbalanced = [str(s["id"]) for s in stock
                      if s["reserved"] != 0 or s["stocked"] != s["on_hand"] + sold.get(s["id"], 0)]
        twice = db.fetchval(
            "SELECT count(*) FROM (SELECT order_id FROM orders.order_history WHERE status = 'fulfilled' "
            "GROUP BY order_id HAVING count(*) > 1) t")
        committed_twice = db.fetchval(
            "SELECT count(*) FROM (SELECT order_id, product_id FROM inventory.stock_movements "
            "WHERE order_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) t")
        mails = _read_mail_log(self.mail_log)
        per_id = Counter(m["message_id"] for m in mails)
        # A sender killed between the server's acceptance and its own record sends the same
        # message again (at least once; SMTP cannot do better): same Message-ID, reported.
        again = sum(c - 1 for c in per_id.values() if c > 1)
        sent = {f"<{r['id']}@oms>" for r in db.fetch(
            "SELECT id::text AS id FROM notifications.notifications WHERE channel = 'email' AND status = 'sent'")}
        unsent_received = len(set(per_id) - sent)
        sent_not_received = len(sent - set(per_id))
        failed = db.fetchval("SELECT count(*) FROM notifications.notifications WHERE status = 'failed'")
        dead = db.fetch("SELECT task_name, error FROM public.dead_letters WHERE redriven_at IS NULL")
        died = self.stack.check_alive()
        return [
            ("every process of the system still running", not died, ", ".join(died) or "all running"),
            ("every accepted order exists and is terminal", not missing and not open_,
             f"{len(accepted)} accepted, {len(status)} in the database, {len(missing)} missing, "
             f"{len(open_)} not terminal"),
            ("stock conserved (stocked = on hand + fulfilled, reserved 0)", not unbalanced,
             f"{len(stock)} products, {len(unbalanced)} off"),
            ("no order fulfilled twice, no stock taken twice", twice == 0 and committed_twice == 0,
             f"{twice} fulfilled twice, {committed_twice} committed twice"),
            ("exactly one mail (one Message-ID) per (event, channel, recipient)",
             unsent_received == 0 and sent_not_received == 0
             and backlog["events without their mail"] == 0 and failed == 0,
             f"{len(per_id)} distinct mails for {len(sent)} sent notifications; {sent_not_received} marked sent "
             f"but not received, {unsent_received} received but not marked sent, "
             f"{backlog['events without their mail']} events without their mail, {failed} failed; "
             f"{again} received again with the same Message-ID (a sender killed after the server took it)"),
            ("no dead letter left", not dead,
             "; ".join(f"{d['task_name']}: {d['error'][:80]}" for d in dead[:5]) or "none"),
            ("drained: nothing pending, unconfirmed or unpublished", not any(backlog.values()),
             ", ".join(f"{k} {v}" for k, v in backlog.items() if v) or "all clear"),
        ]


# Customer-visible events that should have produced a sent mail.
_UNNOTIFIED = (
    "SELECT count(*) FROM ("
    "  SELECT id FROM orders.outbox WHERE event_type IN ('order.reserved', 'order.rejected', 'order.fulfilled', "
    "    'order.cancelled') "
    "  UNION ALL SELECT id FROM users.outbox WHERE event_type = 'user.registered') e "
    "WHERE NOT EXISTS (SELECT 1 FROM notifications.notifications n "
    "                  WHERE n.event_id = e.id AND n.channel = 'email' AND n.status = 'sent')"
)


def _read_mail_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fault_table(faults: list[Fault], attempts: list[Attempt], completed: set[str], gap: float) -> list[str]:
    lines = ["| fault | at (s) | for (s) | orders accepted | failed with a clean 503 | failed otherwise | "
             "completed |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fault in faults:
        # The window a fault can touch: while it lasts and the gap after it.
        window = [a for a in attempts if fault.started <= a.started < fault.started + fault.duration + gap]
        acc = [a for a in window if a.outcome == "accepted"]
        lines.append(
            f"| {fault.name} | {fault.started:.0f} | {fault.duration:.0f} | {len(acc)} | "
            f"{sum(a.outcome == 'unavailable' for a in window)} | {sum(a.outcome == 'failed' for a in window)} | "
            f"{sum(a.order_id in completed for a in acc)} |")
    acc = [a for a in attempts if a.outcome == "accepted"]
    lines.append(f"| **whole run** | 0 | {max((a.started for a in attempts), default=0):.0f} | {len(acc)} | "
                 f"{sum(a.outcome == 'unavailable' for a in attempts)} | "
                 f"{sum(a.outcome == 'failed' for a in attempts)} | {sum(a.order_id in completed for a in acc)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("CHAOS_PROFILE", "full"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, in this order: {','.join(FAULTS)} (default: all)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.faults.split(",") if n.strip()]
    unknown = set(names) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    profile = PROFILES[args.profile]
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="oms-chaos-"))
    chaos = Chaos(profile, workdir=workdir)
    chaos.sup.remove_workdir = not args.keep
    started = time.time()
    try:
        log(f"profile {profile.name}; work folder {workdir}")
        chaos.start()
        tokens, products = chaos.prepare(args.clients)
        chaos.t0 = time.monotonic()
        load = Load(chaos.stack.gateway_url, tokens, products, rate=profile.rate, t0=chaos.t0)
        load.start()
        try:
            chaos.run_faults(names)
        finally:
            load.finish()
        log(f"load stopped after {chaos._now():.0f}s: {len(load.attempts)} orders tried; draining")
        db = PgClient(chaos.stack.database_url)
        try:
            drain_started = time.monotonic()
            backlog = chaos.drain(db)
            drained_in = time.monotonic() - drain_started
            completed = {r["id"] for r in db.fetch(
                "SELECT id::text AS id FROM orders.orders WHERE status IN ('fulfilled', 'rejected', 'cancelled')")}
            verdicts = chaos.judge(db, load, backlog)
            outcomes = Counter(r["status"] for r in db.fetch("SELECT status FROM orders.orders"))
        finally:
            db.close()
        report = [f"# Chaos run ({profile.name} profile)", "",
                  f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}; "
                  f"{args.clients} clients at {profile.rate:g} orders/s; settings "
                  + ", ".join(f"`{k}={v}`" for k, v in profile.settings.items()) + "; "
                  f"drained in {drained_in:.0f} s after the load stopped; orders by final status: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
                  + "; cancels answered: " + ", ".join(f"{k} {v}" for k, v in sorted(load.cancels.items()))
                  + "; failed otherwise: " + (", ".join(f"{k} {v}" for k, v in sorted(Counter(
                      a.detail for a in load.attempts if a.outcome == "failed").items())) or "none"),
                  "", *fault_table(chaos.faults, load.attempts, completed, profile.gap), "",
                  "| invariant | held | detail |", "| --- | --- | --- |",
                  *[f"| {name} | {'yes' if ok else '**NO**'} | {detail} |" for name, ok, detail in verdicts]]
        text = "\n".join(report) + "\n"
        print(text)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"chaos-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.md"
        out.write_text(text)
        log(f"report written to {out}")
        failed = [name for name, ok, _ in verdicts if not ok]
        if failed:
            log("invariants failed: " + "; ".join(failed))
            if args.keep:
                log(f"logs kept in {workdir / 'logs'}")
            return 1
        return 0
    finally:
        chaos.sup.stop_all()


if __name__ == "__main__":
    sys.exit(main())
