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
import os
import random
import signal
import shutil
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

from bench import orders_db
from bench.api import Api
from bench.mailsink import received
from bench.pg import PgClient
from bench.procs import ROOT, Supervisor, install_signal_handlers, kill_group
from bench.report import table
from bench.stack import HTTP_NAMES, Stack

RESULTS = ROOT / "bench" / "results"
FAULTS = ("pool-child", "worker", "gunicorn", "redis-freeze", "redis-wipe", "postgres-freeze", "smtp", "beat")
ADMIN = ("admin@chaos.example.com", "chaos-admin-password")


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
        self.gateway, self.tokens, self.products, self.rate, self.t0 = gateway, tokens, products, rate, t0
        self.attempts: list[Attempt] = []
        self.cancels: Counter = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i, t), name=f"client-{i}", daemon=True)
                        for i, t in enumerate(tokens)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, index: int, token: str) -> None:
        rnd = random.Random(index)
        api = Api(self.gateway, read_timeout=20, pool=2)
        interval = len(self.tokens) / self.rate
        next_at = time.monotonic() + rnd.random() * interval
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += interval
            lines = rnd.sample(self.products, k=rnd.choice((1, 1, 2)))
            body = {"items": [{"product_id": p["id"], "quantity": rnd.randint(1, 3)} for p in lines]}
            attempt = self._place(api, token, body)
            with self.lock:
                self.attempts.append(attempt)
            if attempt.order_id and rnd.random() < 0.1:
                status, _ = self._call(api, "POST", f"/api/orders/{attempt.order_id}/cancel", token)
                with self.lock:
                    self.cancels[str(status)] += 1

    @staticmethod
    def _call(api: Api, method: str, path: str, token: str, **kwargs) -> tuple[int | str, object]:
        try:
            return api.call(method, path, token=token, **kwargs)
        except urllib3.exceptions.HTTPError as exc:
            return type(exc).__name__, None  # a dropped connection or a timeout

    def _place(self, api: Api, token: str, body: dict) -> Attempt:
        started = time.monotonic() - self.t0
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        for _ in range(3):
            status, data = self._call(api, "POST", "/api/orders", token, body=body, headers=headers)
            if status in (200, 201, 202) and isinstance(data, dict) and data.get("id"):
                return Attempt(started, "accepted", data["id"])
            if isinstance(status, int) and status != 503:
                break
            self.stop.wait(1.0)
        if status == 503 and isinstance(data, dict) and data.get("status") == 503:
            return Attempt(started, "unavailable", detail="503")
        return Attempt(started, "failed", detail=str(status))


# -- faults ------------------------------------------------------------------------------
@dataclass
class Fault:
    name: str
    started: float
    duration: float = 0.0
    note: str = ""


class Chaos:
    def __init__(self, profile: Profile, *, workdir: Path, keep: bool):
        self.profile = profile
        self.sup = Supervisor(workdir, remove_workdir=not keep)
        self.stack = Stack(self.sup, workdir=workdir, log=log)
        self.faults: list[Fault] = []
        self.t0 = 0.0

    # -- setup --------------------------------------------------------------------------
    def start(self, clients: int) -> tuple[list[str], list[dict]]:
        """The system on embedded servers (the run freezes and wipes them), its users and products."""
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
            os.environ.pop(name, None)
        os.environ.update({"ACCESS_TOKEN_TTL_SECONDS": "7200", "RATE_LIMIT_DEFAULT": "1000000/minute",
                           "RATE_LIMIT_LOGIN": "1000000/minute", **self.profile.settings})
        self.sup.start_reaper()
        self.stack.start_servers()
        self.stack.build_env()
        self.stack.start_mail_sink()
        self.stack.migrate()
        self.stack.create_admin(*ADMIN)
        self.stack.start_http()
        self.stack.start_workers()
        api = Api(self.stack.gateway_url, read_timeout=20)
        admin = api.login(*ADMIN)["access_token"]
        # One scarce product: some orders are rejected.
        products = [api.create_product(admin, sku=f"CHAOS-{i}-{uuid.uuid4().hex[:6]}", name=f"Chaos product {i}",
                                       price_cents=100 + i, stock=40 if i == 0 else 100_000) for i in range(6)]
        tokens = [api.register(f"chaos-{i}-{uuid.uuid4().hex[:6]}@example.com", name=f"Client {i}")["access_token"]
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

    def kill_pool_child(self, fault: Fault) -> None:
        if children := self._children("worker"):
            victim = random.choice(children)
            victim.send_signal(signal.SIGKILL)
            fault.note = f"pid {victim.pid}"

    def kill_and_start(self, fault: Fault, name: str, down: float) -> None:
        """SIGKILL a Celery process and everything it forked, then start it again."""
        proc = self.sup.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.popen.wait(10)
        kill_group(proc.pid, timeout=5)
        time.sleep(down)
        self.stack.start_workers_named([name])

    def kill_gunicorn_workers(self, fault: Fault) -> None:
        killed = []
        for name in HTTP_NAMES:
            if children := self._children(name):
                children[0].send_signal(signal.SIGKILL)
                killed.append(name)
        fault.note = ", ".join(killed)

    def freeze(self, fault: Fault, pid: int, seconds: float) -> None:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
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
        fault.note = f"SIGSTOP/SIGCONT of {len(tree)} processes"

    def wipe_redis(self, fault: Fault) -> None:
        from devtools import embedded

        old = self.stack.embedded_redis
        os.kill(old.pid, signal.SIGKILL)
        old.stop(timeout=10)
        self.sup.forget_server(old)
        for path in old.data_dir.iterdir():
            if path.name.startswith(("appendonly", "dump")) or path.name.endswith((".aof", ".rdb")):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.stack.embedded_redis = server = embedded.start_redis(old.data_dir, persistent=True)
        self.sup.add_server(server)

    def stop_smtp(self, fault: Fault, seconds: float) -> None:
        self.sup.stop("smtp-sink", timeout=10)
        time.sleep(seconds)
        self.stack.start_mail_sink()

    def run_faults(self, names: list[str]) -> None:
        p = self.profile
        steps = {
            "pool-child": ("SIGKILL a Celery pool child", self.kill_pool_child),
            "worker": ("SIGKILL the Celery worker, start it again",
                       lambda f: self.kill_and_start(f, "worker", p.worker_down)),
            "gunicorn": ("SIGKILL a gunicorn worker of each service", self.kill_gunicorn_workers),
            "redis-freeze": ("freeze Redis", lambda f: self.freeze(f, self.stack.embedded_redis.pid, p.redis_freeze)),
            "redis-wipe": ("restart Redis with its data wiped", self.wipe_redis),
            "postgres-freeze": ("freeze PostgreSQL",
                                lambda f: self.freeze(f, self.stack.embedded_pg.pid, p.postgres_freeze)),
            "smtp": ("stop the SMTP server", lambda f: self.stop_smtp(f, p.smtp_down)),
            "beat": ("SIGKILL beat, start it again", lambda f: self.kill_and_start(f, "beat", 0)),
        }
        time.sleep(p.warmup)
        for name in names:
            label, step = steps[name]
            fault = Fault(label, self._now())
            step(fault)
            fault.duration = self._now() - fault.started
            log(f"{fault.name}: at {fault.started:.0f}s for {fault.duration:.0f}s {fault.note}")
            self.faults.append(fault)
            time.sleep(p.gap)
        time.sleep(p.tail)

    # -- judging -------------------------------------------------------------------------------
    def judge(self, db: PgClient, load: Load, backlog: dict) -> list[tuple[str, bool, str]]:
        accepted = [a.order_id for a in load.attempts if a.outcome == "accepted"]
        status = {r["id"]: r["status"] for r in db.fetch("SELECT id::text AS id, status FROM orders.orders")}
        missing = [o for o in accepted if o not in status]
        open_ = [o for o, s in status.items() if s not in orders_db.TERMINAL]
        stock = orders_db.stock(db)
        unbalanced = [p for p in stock if p["reserved"] != 0 or p["stocked"] != p["on_hand"] + p["fulfilled"]]
        twice = db.fetchval("SELECT count(*) FROM (SELECT order_id FROM orders.order_history "
                            "WHERE status = 'fulfilled' GROUP BY order_id HAVING count(*) > 1) t")
        committed_twice = db.fetchval(
            "SELECT count(*) FROM (SELECT order_id, product_id FROM inventory.stock_movements "
            "WHERE order_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) t")
        per_id = Counter(m["message_id"] for m in received(self.stack.mail_count_file))
        # A sender killed between the server's acceptance and its own record sends the same
        # message again (at least once; SMTP cannot do better): same Message-ID, reported.
        again = sum(c - 1 for c in per_id.values() if c > 1)
        sent = {f"<{r['id']}@oms>" for r in db.fetch(
            "SELECT id::text AS id FROM notifications.notifications WHERE channel = 'email' AND status = 'sent'")}
        unsent_received, sent_not_received = len(set(per_id) - sent), len(sent - set(per_id))
        failed = db.fetchval("SELECT count(*) FROM notifications.notifications WHERE status = 'failed'")
        dead = db.fetch("SELECT task_name, error FROM public.dead_letters WHERE redriven_at IS NULL")
        died, unmailed = self.stack.check_alive(), backlog["events without their mail"]
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
             unsent_received == 0 and sent_not_received == 0 and unmailed == 0 and failed == 0,
             f"{len(per_id)} distinct mails for {len(sent)} sent notifications; {sent_not_received} marked sent "
             f"but not received, {unsent_received} received but not marked sent, {unmailed} events without their "
             f"mail, {failed} failed; {again} received again with the same Message-ID (a sender killed after the "
             "server took it)"),
            ("no dead letter left", not dead,
             "; ".join(f"{d['task_name']}: {d['error'][:80]}" for d in dead[:5]) or "none"),
            ("drained: nothing pending, unconfirmed or unpublished", not any(backlog.values()),
             ", ".join(f"{k} {v}" for k, v in backlog.items() if v) or "all clear"),
        ]


def fault_table(faults: list[Fault], attempts: list[Attempt], completed: set[str], gap: float) -> list[str]:
    def row(name: str, start: float, duration: float, window: list[Attempt]) -> list:
        acc = [a for a in window if a.outcome == "accepted"]
        return [name, f"{start:.0f}", f"{duration:.0f}", *map(str, (
            len(acc), sum(a.outcome == "unavailable" for a in window), sum(a.outcome == "failed" for a in window),
            sum(a.order_id in completed for a in acc)))]

    # The window a fault can touch: while it lasts and the gap after it.
    return table(["fault", "at (s)", "for (s)", "orders accepted", "failed with a clean 503", "failed otherwise",
                  "completed"],
                 [row(f.name, f.started, f.duration,
                      [a for a in attempts if f.started <= a.started < f.started + f.duration + gap]) for f in faults]
                 + [row("**whole run**", 0, max((a.started for a in attempts), default=0), attempts)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("CHAOS_PROFILE", "full"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, in this order: {','.join(FAULTS)} (default: all)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.faults.split(",") if n.strip()]
    if unknown := set(names) - set(FAULTS):
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    profile = PROFILES[args.profile]
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="oms-chaos-"))
    chaos = Chaos(profile, workdir=workdir, keep=args.keep)
    started = time.time()
    try:
        log(f"profile {profile.name}; work folder {workdir}")
        tokens, products = chaos.start(args.clients)
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
            # No stall limit: a message a killed worker held comes back only after the visibility timeout.
            drain = orders_db.drain(db, timeout=profile.drain_timeout, stall=None, interval=2, mails=True,
                                    alive=lambda: not chaos.stack.check_alive())
            outcomes = Counter(r["status"] for r in db.fetch("SELECT status FROM orders.orders"))
            completed = {r["id"] for r in db.fetch("SELECT id::text AS id FROM orders.orders "
                                                   "WHERE status IN ('fulfilled', 'rejected', 'cancelled')")}
            verdicts = chaos.judge(db, load, drain["left"])
        finally:
            db.close()
        listed = lambda counts: ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))  # noqa: E731
        text = "\n".join([
            f"# Chaos run ({profile.name} profile)", "",
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}; {args.clients} clients at "
            f"{profile.rate:g} orders/s; settings " + ", ".join(f"`{k}={v}`" for k, v in profile.settings.items())
            + f"; drained in {drain['seconds']:.0f} s after the load stopped; orders by final status: "
            + listed(outcomes) + "; cancels answered: " + listed(load.cancels) + "; failed otherwise: "
            + (listed(Counter(a.detail for a in load.attempts if a.outcome == "failed")) or "none"), "",
            *fault_table(chaos.faults, load.attempts, completed, profile.gap),
            *table(["invariant", "held", "detail"], [[n, "yes" if ok else "**NO**", d] for n, ok, d in verdicts])])
        print(text)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"chaos-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.md"
        out.write_text(text)
        log(f"report written to {out}")
        if failed := [name for name, ok, _ in verdicts if not ok]:
            log("invariants failed: " + "; ".join(failed) + (f"; logs kept in {workdir / 'logs'}" if args.keep else ""))
            return 1
        return 0
    finally:
        chaos.sup.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
