"""The load generators: wrk (closed loop, ``lua/bench.lua``), an open-loop paced generator, locust."""
from __future__ import annotations

import csv
import json
import random
import shutil
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

from bench.orders_db import pct
from bench.procs import ROOT

LUA = Path(__file__).resolve().parent / "lua" / "bench.lua"


def _summary(tool: str, requests: int, seconds: float, statuses: dict, socket_errors: dict, latency_ms: dict,
             **extra) -> dict:
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    rate = lambda n: round(n / seconds, 1) if seconds else 0.0  # noqa: E731
    return {"tool": tool, **extra, "duration_s": round(seconds, 3), "requests": requests, "rps": rate(requests),
            "ok": ok, "ok_rps": rate(ok), "statuses": statuses, "socket_errors": socket_errors,
            "errors": requests - ok + sum(socket_errors.values()), "latency_ms": latency_ms}


def wrk(sup, *, name: str, url: str, connections: int, duration: float, env: dict, mode: str, products_file: Path,
        tokens_file: Path | None = None, run_id: str = "bench", max_qty: int = 1, threads: int = 2,
        timeout_s: int = 10) -> dict:
    """One wrk run (``mode``: plain, read or place; see lua/bench.lua); rps and latencies in ms."""
    threads = min(threads, connections)
    argv = [shutil.which("wrk") or "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s}s", "-s", str(LUA), url, "--", mode, str(products_file),
            str(tokens_file or "-"), run_id, "1", str(max_qty)]
    result = sup.run(name, argv, env=env, timeout=duration + timeout_s + 60)
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    raw = json.loads(line[len("BENCH_JSON "):])
    # Connection errors are counted apart from the status codes; the rest are requests answered.
    return _summary("wrk", raw["requests"], raw["duration_us"] / 1e6, {int(k): v for k, v in raw["statuses"].items()},
                    {k: raw["errors"][k] for k in ("connect", "read", "write", "timeout")},
                    {k: round(v / 1000.0, 2) for k, v in raw["latency_us"].items()},
                    retry_after_503=raw.get("retry_after_503", 0), argv=argv, connections=connections, threads=threads)


def paced(*, base_url: str, tokens: list[str], products: list[str], rate: float, duration: float, run_id: str,
          max_qty: int, max_workers: int = 64) -> dict:
    """Orders at a fixed arrival rate, whatever the latency (open loop).

    wrk keeps N connections busy (closed loop), which finds the maximum but cannot hold a rate;
    this sends one order every 1/rate s from a thread pool and times each from its scheduled
    send time (no coordinated omission).
    """
    http = urllib3.PoolManager(maxsize=max_workers, retries=False, timeout=urllib3.Timeout(connect=2, read=15))
    total = max(1, int(rate * duration))
    statuses, errors, latencies, lock = Counter(), Counter(), [], threading.Lock()
    retry_after = Counter()  # 503 answers with a Retry-After header (admission control)
    rng = random.Random(42)
    plan = [(tokens[i % len(tokens)], rng.choice(products), rng.randint(1, max_qty)) for i in range(total)]
    start = time.monotonic() + 0.2

    def one(i: int) -> None:
        token, product, qty = plan[i]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                   "Idempotency-Key": f"{run_id}-paced-{i}"}
        body = json.dumps({"items": [{"product_id": product, "quantity": qty}]}).encode()
        try:
            r = http.request("POST", base_url + "/api/orders", body=body, headers=headers)
            with lock:
                statuses[r.status] += 1
                retry_after[503] += r.status == 503 and "Retry-After" in r.headers
                latencies.append(time.monotonic() - (start + i / rate))
        except urllib3.exceptions.HTTPError as exc:
            with lock:
                errors[type(exc).__name__] += 1

    late = 0
    with ThreadPoolExecutor(max_workers) as pool:
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late += delay < -0.05
            pool.submit(one, i)
    ms = {k: None if v is None else round(v * 1000, 2)
          for k, v in (("p50", pct(latencies, 0.5)), ("p90", pct(latencies, 0.9)), ("p99", pct(latencies, 0.99)),
                       ("max", max(latencies, default=None)))}
    # Every planned order is a request: those that got no answer are errors, by kind in socket_errors.
    out = _summary("bench.load.paced (open loop)", total, time.monotonic() - start, dict(statuses), {}, ms,
                   target_rate=rate, sent_late=late, retry_after_503=retry_after[503])
    return {**out, "socket_errors": dict(errors)}


def locust(sup, *, base_url: str, users: int, duration: float, env: dict, prefix: Path) -> dict:
    """The locust mix of tests/locustfile.py, headless; per request type: counts, rate, p50, p99."""
    argv = [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "tests" / "locustfile.py"), "--headless",
            "-H", base_url, "-u", str(users), "-r", str(max(1, users // 5)), "-t", f"{max(5, round(duration))}s",
            "--csv", str(prefix), "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
            "--stop-timeout", "10", "Shopper"]  # the API mix (Visitor is the storefront's)
    sup.run("locust", argv, env={**env, "PYTHONPATH": str(ROOT)}, timeout=duration + 120)
    num = lambda v: float(v) if v not in (None, "", "N/A") else None  # noqa: E731
    with open(f"{prefix}_stats.csv") as fh:
        return {"users": users, "requests": {
            "total" if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}": {
                "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 2), "p50_ms": num(row.get("50%")),
                "p99_ms": num(row.get("99%"))} for row in csv.DictReader(fh)}}
