"""Running wrk with the bench's Lua script and reading its JSON summary."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "bench.lua"


def available() -> str | None:
    return shutil.which("wrk")


def run(sup, *, name: str, url: str, connections: int, duration: float, env: dict, mode: str,
        products_file: Path, tokens_file: Path | None = None, run_id: str = "bench", keys: bool = False,
        max_qty: int = 1, threads: int = 2, timeout_s: int = 10) -> dict:
    """One wrk run; returns its summary with rps and latencies in milliseconds."""
    argv = [
        available() or "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s", "-s", str(LUA), url, "--", mode, str(products_file),
        str(tokens_file) if tokens_file else "-", run_id, "1" if keys else "0", str(max_qty),
    ]
    result = sup.run(name, argv, env=env, timeout=duration + timeout_s + 60)
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    raw = json.loads(line[len("BENCH_JSON "):])
    seconds = raw["duration_us"] / 1e6
    lat = {k: round(v / 1000.0, 2) for k, v in raw["latency_us"].items()}
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    errors = raw["errors"]
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    return {
        "tool": "wrk",
        "argv": argv,
        "connections": connections,
        "threads": min(threads, connections),
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "ok": ok,
        "ok_rps": round(ok / seconds, 1) if seconds else 0.0,
        "statuses": statuses,
        "socket_errors": {k: errors[k] for k in ("connect", "read", "write", "timeout")},
        "errors": (raw["requests"] - ok) + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "latency_ms": lat,
    }
