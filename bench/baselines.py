"""The in-run baselines: what this machine's PostgreSQL, HTTP stack and task queue do bare.

(a) pgbench running the order's core as one SQL transaction, (b) a hello-world Flask app
under our gunicorn settings (bench.hello) hit by wrk, (c) a bare Celery chain with as many
hops as one order causes (bench.chain_app), on the same broker with the same settings.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from bench.orders_db import pct
from bench.pg import PgClient

PGBENCH_SCHEMA = "bench_pgbench"
QUEUE_PREFIX = "bench-"  # the chain's queues: the pipeline's, prefixed
DONE_KEY = "bench:chain:done"  # chains finished (bench.chain_app's last hop counts them)

# The tables the order's core touches, shaped like the real ones (same columns,
# checks and indexes; no history trigger): products, orders, order_lines, outbox.
PGBENCH_SETUP = f"""
DROP SCHEMA IF EXISTS {PGBENCH_SCHEMA} CASCADE;
CREATE SCHEMA {PGBENCH_SCHEMA};
CREATE TABLE {PGBENCH_SCHEMA}.products (
    id integer PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL, price_cents bigint NOT NULL,
    currency char(3) NOT NULL DEFAULT 'USD', active boolean NOT NULL DEFAULT true,
    on_hand integer NOT NULL CHECK (on_hand >= 0), reserved integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (reserved <= on_hand));
CREATE TABLE {PGBENCH_SCHEMA}.orders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id uuid NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'reserved', 'fulfilled', 'rejected', 'cancelled')),
    reason text NULL, total_cents bigint NOT NULL CHECK (total_cents >= 0), currency char(3) NOT NULL,
    idempotency_key text NULL, request_hash text NULL, reserved_at timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key));
CREATE INDEX ON {PGBENCH_SCHEMA}.orders (user_id, created_at DESC, id DESC);
CREATE TABLE {PGBENCH_SCHEMA}.order_lines (
    order_id uuid NOT NULL REFERENCES {PGBENCH_SCHEMA}.orders (id), line_no integer NOT NULL,
    product_id integer NOT NULL, product_name text NOT NULL DEFAULT '',
    quantity integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000), unit_price_cents bigint NOT NULL,
    PRIMARY KEY (order_id, line_no), UNIQUE (order_id, product_id));
CREATE TABLE {PGBENCH_SCHEMA}.outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), event_type text NOT NULL, aggregate_id uuid NULL,
    payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz NULL,
    attempts integer NOT NULL DEFAULT 0);
CREATE INDEX ON {PGBENCH_SCHEMA}.outbox (created_at) WHERE published_at IS NULL;
INSERT INTO {PGBENCH_SCHEMA}.products (id, sku, name, price_cents, on_hand)
    SELECT n, 'PGB-' || n, 'Widget ' || n, 1250, 100000000 FROM generate_series(1, :nproducts) AS n;
ANALYZE {PGBENCH_SCHEMA}.products;
"""

PGBENCH_SCRIPT = f"""\\set product random(1, :nproducts)
\\set qty random(1, 3)
BEGIN;
UPDATE {PGBENCH_SCHEMA}.products SET on_hand = on_hand - :qty, updated_at = now() WHERE id = :product AND active AND on_hand - reserved >= :qty;
INSERT INTO {PGBENCH_SCHEMA}.orders (user_id, total_cents, currency, idempotency_key, request_hash) VALUES (gen_random_uuid(), :qty * 1250, 'USD', md5(random()::text), md5(random()::text)) RETURNING id AS order_id \\gset
INSERT INTO {PGBENCH_SCHEMA}.order_lines (order_id, line_no, product_id, product_name, quantity, unit_price_cents) VALUES (:order_id, 1, :product, 'Widget', :qty, 1250);
INSERT INTO {PGBENCH_SCHEMA}.outbox (event_type, aggregate_id, payload) VALUES ('order.placed', :order_id, jsonb_build_object('order_id', :order_id::text, 'lines', jsonb_build_array(jsonb_build_object('product_id', :product::int, 'quantity', :qty::int))));
COMMIT;
"""


def pgbench(sup, *, pgbench_path: str, url: str, workdir: Path, clients: list[int], duration: float,
            products: int, env: dict, log=print) -> dict:
    """The order transaction at each client count (``-M prepared``), on tables of its own, dropped after."""
    def sql(statement: str) -> str:
        db = PgClient(url)
        try:
            db.execute(statement)
            return db.fetchval("SHOW server_version")
        finally:
            db.close()

    version = sql(PGBENCH_SETUP.replace(":nproducts", str(int(products))))
    script = workdir / "pgbench-order.sql"
    script.write_text(PGBENCH_SCRIPT)
    number = lambda pattern, text: float(m.group(1)) if (m := re.search(pattern, text)) else None  # noqa: E731
    runs = {}
    for c in clients:
        logdir = workdir / f"pgbench-{c}"
        logdir.mkdir(exist_ok=True)
        argv = [pgbench_path, "-n", "-M", "prepared", "-c", str(c), "-j", "2", "-T", str(max(1, round(duration))),
                "-D", f"nproducts={products}", "-f", str(script), "-l", "--log-prefix", str(logdir / "tx"), url]
        out = sup.run(f"pgbench-{c}", argv, env=env, timeout=duration + 120, cwd=workdir).stdout
        tps = number(r"tps = ([\d.]+) \(without initial connection time\)", out)
        # The per-transaction log: field 3 is the latency in microseconds.
        lat = [int(f[2]) / 1000.0 for path in logdir.glob("tx*") for f in map(str.split, path.read_text().splitlines())
               if len(f) >= 3 and f[2].isdigit()]
        runs[str(c)] = {"clients": c, "tps": round(tps, 1) if tps else None,
                        "failed": int(number(r"number of failed transactions: (\d+)", out) or 0),
                        "latency_avg_ms": number(r"latency average = ([\d.]+) ms", out)}
        if lat:
            runs[str(c)].update(p50_ms=round(pct(lat, 0.5), 2), p99_ms=round(pct(lat, 0.99), 2), logged=len(lat))
        for path in logdir.glob("tx*"):
            path.unlink()
        log(f"  pgbench @{c}: {runs[str(c)]['tps']} tps, p99 {runs[str(c)].get('p99_ms')} ms")
    sql(f"DROP SCHEMA IF EXISTS {PGBENCH_SCHEMA} CASCADE")
    return {"server_version": version, "script": PGBENCH_SCRIPT, "products": products, "runs": runs,
            "mode": "-M prepared, -j 2", "transactions": sum(r.get("logged", 0) for r in runs.values())}


# -- (c) the bare chain ------------------------------------------------------------------------

# The event each pipeline task emits on the happy path (reserved, not rejected): the walk over
# workers.relay.ROUTES follows these to count the tasks one order causes.
HAPPY_PATH_EMITS = {"inventory.reserve": "inventory.reserved", "orders.apply_reservation": "order.reserved",
                    "orders.fulfil": "order.fulfilled", "inventory.commit": "inventory.committed"}


def pipeline_hops(fulfilment_delay: float = 0.0) -> list[dict]:
    """Every task one placed order causes on the happy path, walked from ``order.placed`` in ROUTES.

    With FULFILMENT_DELAY_SECONDS <= 0 there is no delayed task: the reservation step fulfils the
    order and writes order.fulfilled alone, not order.reserved.
    """
    from workers.relay import ROUTES

    emits = {**HAPPY_PATH_EMITS, **({"orders.apply_reservation": "order.fulfilled"} if fulfilment_delay <= 0 else {})}
    hops, frontier, seen = [], ["order.placed"], set()
    while frontier:
        event = frontier.pop(0)
        if event in seen:
            continue
        seen.add(event)
        for route in ROUTES.get(event, ()):
            delayed = bool(getattr(route, "delayed", False))
            if not (delayed and fulfilment_delay <= 0):
                hops.append({"event": event, "task": route.task, "queue": route.queue, "delayed": delayed})
            if route.task in emits:
                frontier.append(emits[route.task])
    return hops


def observed_hops(consumed: dict[str, int], orders: int) -> list[dict] | None:
    """The tasks one order actually caused, from the consumers' inbox rows of ``orders`` probe orders."""
    from workers.relay import ROUTES

    if orders <= 0 or not consumed:
        return None
    queue_of = {r.task: r.queue for routes in ROUTES.values() for r in routes}
    return [{"event": "(observed)", "task": consumer, "queue": queue_of.get(consumer, "default"), "delayed": False}
            for consumer, n in sorted(consumed.items()) for _ in range(round(n / orders))]


def chain(sup, *, worker_command: str, env: dict, hops: list[dict], duration: float, in_flight: int,
          batch: int = 1, account=None, log=print) -> dict:
    """Keep ``in_flight`` chains going for ``duration`` s; chains finished per second, and (``account()``: a
    ``bench.monitor.CpuAccount``) the CPU over that loop. ``batch`` > 1: the batched chain, as the pipeline
    batches events: each message carries a list of up to ``batch`` payloads, as many as are ready (chains
    free to start), and each hop handles them in turn and forwards the list as one message."""
    import redis
    from celery import chain as celery_chain

    from bench.chain_app import make_app
    from bench.monitor import per_unit

    app = make_app(env)
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.delete(DONE_KEY)
    done = lambda: int(client.get(DONE_KEY) or 0)  # noqa: E731
    zero = "0" * 32
    payload = {"id": zero, "type": "order.placed", "occurred_at": "2024-01-01T00:00:00+00:00", "headers": {},
               "payload": {"order_id": zero, "user_id": zero, "lines": [{"product_id": zero, "quantity": 1}]}}
    batch = max(1, batch)
    tasks = ("bench.hop", "bench.last_hop") if batch == 1 else ("bench.batch_hop", "bench.batch_last_hop")

    def send(n: int) -> None:
        first = payload if batch == 1 else [payload] * n
        celery_chain(*[app.signature(tasks[i == len(hops) - 1], args=(first,) if i == 0 else (),
                                     queue=QUEUE_PREFIX + h["queue"]) for i, h in enumerate(hops)]).apply_async()

    sup.start("chain-worker", ["/bin/sh", "-c", worker_command], env=env)
    try:
        send(1)  # one chain through first, so the worker is consuming before the clock starts
        deadline = time.monotonic() + 60
        while done() < 1:
            if time.monotonic() > deadline or not sup.procs["chain-worker"].alive():
                raise RuntimeError("the chain worker finished no chain:\n" + sup.procs["chain-worker"].log_tail())
            time.sleep(0.1)
        sent = done0 = done()
        samples, messages, start = [], 0, time.monotonic()
        cpu = account() if account else None
        if cpu:
            cpu.start()
        while (now := time.monotonic()) < start + duration:
            finished = done()
            samples.append((now - start, finished - done0))
            while (ready := in_flight - (sent - finished)) > 0:
                send(n := min(ready, batch))
                sent, messages = sent + n, messages + 1
            time.sleep(0.005)
        elapsed, finished = time.monotonic() - start, done()
        cpu = cpu.stop() if cpu else None
        steady = [s for s in samples if s[0] >= duration * 0.1]  # the rate after the first 10% of the run
        rate = ((steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
                if len(steady) > 1 and steady[-1][0] > steady[0][0] else None)
        deadline = time.monotonic() + 60  # let the chains in flight finish: nothing left on the broker
        while done() < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        log(f"  chain{'' if batch == 1 else f' batched (<= {batch})'}: {rate and round(rate, 1)} chains/s "
            f"({len(hops)} hops, {(sent - done0) / max(1, messages):.1f} chains per message)")
        return {"hops": len(hops), "queues": [QUEUE_PREFIX + h["queue"] for h in hops], "in_flight": in_flight,
                "max_batch": batch, "chains_per_message": round((sent - done0) / max(1, messages), 2),
                "duration_s": round(elapsed, 2), "chains_finished": finished - done0,
                "chains_per_s": rate and round(rate, 1), "tasks_per_s": rate and round(rate * len(hops), 1),
                "all_finished": done() >= sent, "sent": sent - done0, "worker_command": worker_command,
                "cpu": cpu, "cpu_per_unit": per_unit(cpu, finished - done0, "chain")}
    finally:
        sup.stop("chain-worker", timeout=60)
        for key in client.scan_iter(match=QUEUE_PREFIX + "*"):
            client.delete(key)
        client.delete(DONE_KEY)
        client.close()


def chain_worker_command(worker_command: str) -> str:
    """The Procfile's worker line, pointed at the chain app and its bench- queues, with a node name of its own."""
    command = worker_command.replace("workers.celery_app:app", "bench.chain_app:app")
    if command == worker_command:
        raise RuntimeError("cannot find '-A workers.celery_app:app' in the Procfile's worker line")
    command, n = re.subn(r"(-Q\s*|--queues[= ])(\S+)", lambda m: m.group(1) + ",".join(
        QUEUE_PREFIX + q for q in m.group(2).strip("'\"").split(",")), command)
    if not n:
        queues = ("default", "inventory", "orders", "notifications", "outbox")
        command += " -Q " + ",".join(QUEUE_PREFIX + q for q in queues)
    return command + " -n bench-chain@%h"


def hello_command(gateway_command: str) -> str:
    """The Procfile's gateway line serving bench.hello (app and configuration) under the same gunicorn settings."""
    command = re.sub(r"app\.wsgi:\w+", "bench.hello:app", gateway_command)
    command = command.replace("-c config/gunicorn.conf.py", "-c python:bench.hello")
    command = re.sub(r"--control-socket\s+\S+", "--no-control-socket", command)
    if "bench.hello:app" not in command or "python:bench.hello" not in command:
        raise RuntimeError("cannot adapt the Procfile's gateway line to the hello-world app")
    return command
