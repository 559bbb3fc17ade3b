"""The in-run baselines: what this machine's PostgreSQL, HTTP stack and task queue do bare.

(a) pgbench running the order's core as one SQL transaction, (b) a hello-world
Flask app under our gunicorn settings hit by wrk, (c) a bare Celery chain with as
many hops as one order causes, on the same broker with the same settings.
"""
from __future__ import annotations

import glob
import re
import time
from pathlib import Path

PGBENCH_SCHEMA = "bench_pgbench"

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
    from bench.pg import PgClient

    db = PgClient(url)
    try:
        db.execute(PGBENCH_SETUP.replace(":nproducts", str(int(products))))
        version = db.fetchval("SHOW server_version")
    finally:
        db.close()
    script = workdir / "pgbench-order.sql"
    script.write_text(PGBENCH_SCRIPT)
    runs = {}
    for c in clients:
        logdir = workdir / f"pgbench-{c}"
        logdir.mkdir(exist_ok=True)
        argv = [pgbench_path, "-n", "-M", "prepared", "-c", str(c), "-j", "2", "-T", str(max(1, round(duration))),
                "-D", f"nproducts={products}", "-f", str(script), "-l", "--log-prefix", str(logdir / "tx"), url]
        result = sup.run(f"pgbench-{c}", argv, env=env, timeout=duration + 120, cwd=workdir)
        out = result.stdout
        tps = _float(r"tps = ([\d.]+) \(without initial connection time\)", out)
        failed = _int(r"number of failed transactions: (\d+)", out) or 0
        lat = _latencies(logdir)
        runs[str(c)] = {"clients": c, "tps": round(tps, 1) if tps else None, "failed": failed,
                   "latency_avg_ms": _float(r"latency average = ([\d.]+) ms", out), **lat}
        log(f"  pgbench @{c}: {runs[str(c)]['tps']} tps, p99 {lat.get('p99_ms')} ms")
    db = PgClient(url)
    try:
        db.execute(f"DROP SCHEMA IF EXISTS {PGBENCH_SCHEMA} CASCADE")
    finally:
        db.close()
    return {"server_version": version, "script": PGBENCH_SCRIPT, "products": products, "runs": runs,
            "mode": "-M prepared, -j 2"}


def _float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def _latencies(logdir: Path) -> dict:
    """Percentiles from pgbench's per-transaction log (field 3 is the latency in us)."""
    lat = []
    for path in glob.glob(str(logdir / "tx*")):
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        Path(path).unlink()
    if not lat:
        return {}
    lat.sort()
    pick = lambda p: round(lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] / 1000.0, 2)
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "logged": len(lat)}


# -- (c) the bare chain ------------------------------------------------------------------------

# The event each pipeline task emits on the happy path (reserved, not rejected): the
# walk over workers.relay.ROUTES follows these to count the tasks one order causes.
HAPPY_PATH_EMITS = {
    "inventory.reserve": "inventory.reserved",
    "orders.apply_reservation": "order.reserved",
    "orders.fulfil": "order.fulfilled",
}


def pipeline_hops(fulfilment_delay: float = 0.0) -> list[dict]:
    """Every task one placed order causes on the happy path, walked from ``order.placed`` in ROUTES.

    A delayed route is not sent when FULFILMENT_DELAY_SECONDS <= 0 (``send_events``
    skips it: the order is fulfilled inline), so it is not counted then, but the
    event its task would emit is still followed.
    """
    from workers.relay import ROUTES

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
            emitted = HAPPY_PATH_EMITS.get(route.task)
            if emitted:
                frontier.append(emitted)
    return hops


def observed_hops(consumed: dict[str, int], orders: int) -> list[dict] | None:
    """The tasks one order actually caused, from the consumers' inbox rows of a probe."""
    from workers.relay import ROUTES

    if orders <= 0 or not consumed:
        return None
    queue_of = {r.task: r.queue for routes in ROUTES.values() for r in routes}
    hops = []
    for consumer, n in sorted(consumed.items()):
        per_order = round(n / orders)
        hops += [{"event": "(observed)", "task": consumer, "queue": queue_of.get(consumer, "default"),
                  "delayed": False}] * per_order
    return hops


def chain(sup, *, worker_command: str, env: dict, hops: list[dict], duration: float, in_flight: int,
          log=print) -> dict:
    """Keep ``in_flight`` chains going for ``duration`` s; chains finished per second."""
    import redis
    from celery import chain as celery_chain

    from bench.chain_app import DONE_KEY, QUEUE_PREFIX, make_app

    app = make_app(env)
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.delete(DONE_KEY)
    sup.start("chain-worker", ["/bin/sh", "-c", worker_command], env=env)
    try:
        # Warm-up: one chain through, so the worker is consuming before the clock starts.
        payload = {"id": "0" * 32, "type": "order.placed", "occurred_at": "2024-01-01T00:00:00+00:00",
                   "payload": {"order_id": "0" * 32, "user_id": "0" * 32,
                               "lines": [{"product_id": "0" * 32, "quantity": 1}]}, "headers": {}}

        def signatures():
            sigs = []
            for i, h in enumerate(hops):
                name = "bench.last_hop" if i == len(hops) - 1 else "bench.hop"
                args = (payload,) if i == 0 else ()
                sigs.append(app.signature(name, args=args, queue=QUEUE_PREFIX + h["queue"]))
            return celery_chain(*sigs)

        signatures().apply_async()
        deadline = time.monotonic() + 60
        while int(client.get(DONE_KEY) or 0) < 1:
            if time.monotonic() > deadline or not sup.procs["chain-worker"].alive():
                raise RuntimeError("the chain worker finished no chain:\n" + sup.procs["chain-worker"].log_tail())
            time.sleep(0.1)
        sent = done0 = int(client.get(DONE_KEY) or 0)
        sent_base = sent
        samples = []
        start = time.monotonic()
        end = start + duration
        while time.monotonic() < end:
            done = int(client.get(DONE_KEY) or 0)
            samples.append((time.monotonic() - start, done - done0))
            while sent - done < in_flight:
                signatures().apply_async()
                sent += 1
            time.sleep(0.005)
        done = int(client.get(DONE_KEY) or 0)
        elapsed = time.monotonic() - start
        # Rate over the steady part: after the first 10% of the run.
        trim = [s for s in samples if s[0] >= duration * 0.1]
        rate = (trim[-1][1] - trim[0][1]) / (trim[-1][0] - trim[0][0]) if len(trim) > 1 and trim[-1][0] > trim[0][0] else None
        # Let the chains in flight finish, so nothing is left on the broker.
        deadline = time.monotonic() + 60
        while int(client.get(DONE_KEY) or 0) < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        finished = int(client.get(DONE_KEY) or 0)
        log(f"  chain: {rate and round(rate, 1)} chains/s ({len(hops)} hops)")
        return {
            "hops": len(hops),
            "queues": [QUEUE_PREFIX + h["queue"] for h in hops],
            "in_flight": in_flight,
            "duration_s": round(elapsed, 2),
            "chains_finished": done - done0,
            "chains_per_s": round(rate, 1) if rate else None,
            "tasks_per_s": round(rate * len(hops), 1) if rate else None,
            "all_finished": finished >= sent,
            "sent": sent - sent_base,
            "worker_command": worker_command,
        }
    finally:
        sup.stop("chain-worker", timeout=60)
        for key in client.scan_iter(match=QUEUE_PREFIX + "*"):
            client.delete(key)
        client.delete(DONE_KEY)
        client.close()


def chain_worker_command(worker_command: str) -> str:
    """The Procfile's worker line, pointed at the chain app and its bench- queues."""
    command = worker_command.replace("workers.celery_app:app", "bench.chain_app:app")
    if command == worker_command:
        raise RuntimeError("cannot find '-A workers.celery_app:app' in the Procfile's worker line")

    def prefix(m):
        queues = ",".join("bench-" + q for q in m.group(2).strip("'\"").split(","))
        return f"{m.group(1)}{queues}"

    command, n = re.subn(r"(-Q\s*|--queues[= ])(\S+)", prefix, command)
    if not n:
        command += " -Q bench-default,bench-inventory,bench-orders,bench-notifications,bench-outbox"
    # Its own node name, so it never looks like one of the real workers.
    return command + " -n bench-chain@%h"


def hello_command(gateway_command: str) -> str:
    """The Procfile's gateway line serving the hello-world app under the same gunicorn settings."""
    command = re.sub(r"app\.wsgi:\w+", "bench.hello:app", gateway_command)
    command = command.replace("config/gunicorn.conf.py", "bench/hello_conf.py")
    command = re.sub(r"--control-socket\s+\S+", "--no-control-socket", command)
    if "bench.hello:app" not in command or "bench/hello_conf.py" not in command:
        raise RuntimeError("cannot adapt the Procfile's gateway line to the hello-world app")
    return command
