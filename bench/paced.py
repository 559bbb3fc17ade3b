"""An open-loop order generator: a fixed arrival rate, whatever the latency.

wrk keeps N connections busy (closed loop), which finds the maximum but cannot
hold a rate; the latency target is about a sustained rate, so this sends one
order every 1/rate seconds from a thread pool and times each from its scheduled
send time (no coordinated omission). At the rates the pipeline sustains it costs
a few percent of one core.
"""
from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import urllib3


def run(*, base_url: str, tokens: list[str], products: list[str], rate: float, duration: float,
        run_id: str, keys: bool, max_qty: int, max_workers: int = 64) -> dict:
    http = urllib3.PoolManager(maxsize=max_workers, retries=False, timeout=urllib3.Timeout(connect=2, read=15))
    total = max(1, int(rate * duration))
    statuses: Counter = Counter()
    errors: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    rng = random.Random(42)
    plan = [(tokens[i % len(tokens)], rng.choice(products), rng.randint(1, max_qty)) for i in range(total)]
    start = time.monotonic() + 0.2

    def one(i: int) -> None:
        token, product, qty = plan[i]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        if keys:
            headers["Idempotency-Key"] = f"{run_id}-paced-{i}"
        body = json.dumps({"items": [{"product_id": product, "quantity": qty}]}).encode()
        scheduled = start + i / rate
        try:
            r = http.request("POST", base_url + "/api/orders", body=body, headers=headers)
            elapsed = time.monotonic() - scheduled
            with lock:
                statuses[r.status] += 1
                latencies.append(elapsed)
        except urllib3.exceptions.HTTPError as exc:
            with lock:
                errors[type(exc).__name__] += 1

    late = 0
    with ThreadPoolExecutor(max_workers) as pool:
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.05:
                late += 1
            pool.submit(one, i)
    elapsed = time.monotonic() - start
    latencies.sort()
    pick = (lambda p: round(latencies[min(len(latencies) - 1, int(p * (len(latencies) - 1)))] * 1000, 2)
            if latencies else None)
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    return {
        "tool": "bench.paced (open loop)",
        "target_rate": rate,
        "requests": total,
        "duration_s": round(elapsed, 2),
        "rps": round(total / elapsed, 1),
        "ok": ok,
        "ok_rps": round(ok / elapsed, 1),
        "statuses": dict(statuses),
        "socket_errors": dict(errors),
        "errors": total - ok,
        "sent_late": late,
        "latency_ms": {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": pick(1.0)},
    }
