"""``python -m bench`` (``make bench``, arguments through ``BENCH_ARGS``).

Environment: BENCH_DURATION (s per measured run, default 30), BENCH_CLIENTS
(default 8,32,64), BENCH_SCENARIOS, BENCH_URL (measure a running gateway only),
DATABASE_URL / REDIS_URL (use these servers instead of embedded ones),
BENCH_PACED_RATE, BENCH_KEEP=1 (keep the work folder), BENCH_PROFILE=0 (no py-spy
profiles). Every setting of the system itself comes from the environment as for
``make run``, except the production defaults the bench sets (``bench.stack``).

Exit status: 0 when the run completed and the correctness checks pass (the
targets are reported, not enforced), 1 otherwise, 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
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
from datetime import datetime, timezone
from pathlib import Path

from bench import profile, report
from bench.procs import ROOT, Supervisor, ignore_signals, install_signal_handlers

ALL_SCENARIOS = ["baselines", "read", "pipeline", "paced", "mixed", "placement"]
RESULTS = ROOT / "bench" / "results"


def _env_list(name: str, default: str) -> str:
    return os.environ.get(name) or default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION") or 30),
                   help="seconds per measured run (BENCH_DURATION, default 30)")
    p.add_argument("--baseline-duration", type=float, default=None,
                   help="seconds per baseline run (default: --duration, at most 15: they settle fast)")
    p.add_argument("--clients", default=_env_list("BENCH_CLIENTS", "8,32,64"),
                   help="connections / concurrent clients (BENCH_CLIENTS, default 8,32,64)")
    p.add_argument("--scenarios", default=_env_list("BENCH_SCENARIOS", ",".join(ALL_SCENARIOS)),
                   help=f"comma-separated subset of {','.join(ALL_SCENARIOS)} (BENCH_SCENARIOS)")
    p.add_argument("--url", default=os.environ.get("BENCH_URL"), help="measure this running gateway (BENCH_URL)")
    p.add_argument("--users", type=int, default=int(os.environ.get("BENCH_USERS") or 100),
                   help="customers to register; orders rotate over their tokens (default 100)")
    p.add_argument("--products", type=int, default=int(os.environ.get("BENCH_PRODUCTS") or 50))
    p.add_argument("--stock", type=int, default=10_000_000, help="units per seeded product")
    p.add_argument("--max-qty", type=int, default=3, help="quantity per order line is 1..N")
    p.add_argument("--no-idempotency-keys", action="store_true",
                   help="place orders without an Idempotency-Key (default: a unique key per order)")
    p.add_argument("--paced-rate", type=float, default=float(os.environ.get("BENCH_PACED_RATE") or 0),
                   help="orders/s of the open-loop pipeline run (default: 0.5 x the chain baseline)")
    p.add_argument("--hello-connections", type=int, default=32)
    p.add_argument("--chain-in-flight", type=int, default=64)
    p.add_argument("--locust-users", type=int, default=20)
    p.add_argument("--drain-timeout", type=float, default=float(os.environ.get("BENCH_DRAIN_TIMEOUT") or 300),
                   help="seconds to wait for a pipeline run's orders to finish")
    p.add_argument("--backlog-timeout", type=float, default=600,
                   help="seconds to wait for the placement backlog to be worked off")
    p.add_argument("--settle", type=float, default=11.0,
                   help="pause after each measured phase so backends flush their statistics (PostgreSQL "
                        "flushes an idle backend's at most 10 s late)")
    p.add_argument("--trim", type=float, default=None, help="warm-up seconds left out of pipeline rates")
    p.add_argument("--no-profile", action="store_true", default=os.environ.get("BENCH_PROFILE") == "0",
                   help="no py-spy profiles of read and placement @ the reference client count and the paced "
                        "run (BENCH_PROFILE=0)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON and Markdown reports")
    p.add_argument("--keep", action="store_true", default=os.environ.get("BENCH_KEEP") == "1",
                   help="keep the work folder (logs, data) instead of deleting it")
    return p.parse_args(argv)


def config(args: argparse.Namespace) -> dict:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(ALL_SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {sorted(unknown)} (known: {ALL_SCENARIOS})")
    return {
        "run_id": uuid.uuid4().hex[:8],
        "duration": args.duration,
        "baseline_duration": args.baseline_duration or min(args.duration, 15.0),
        "clients": [int(c) for c in args.clients.split(",") if c.strip()],
        "scenarios": scenarios,
        "url": args.url,
        "users": args.users,
        "products": args.products,
        "stock": args.stock,
        "max_qty": args.max_qty,
        "keys": not args.no_idempotency_keys,
        "paced_rate": args.paced_rate or None,
        "hello_connections": args.hello_connections,
        "chain_in_flight": args.chain_in_flight,
        "locust_users": args.locust_users,
        "drain_timeout": args.drain_timeout,
        "backlog_timeout": args.backlog_timeout,
        "settle": args.settle,
        "trim": args.trim if args.trim is not None else min(2.0, args.duration / 5),
        "profile": not args.no_profile,
    }


# -- what was measured on ----------------------------------------------------------------------

def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=str(ROOT))
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _diff_digest() -> str | None:
    import hashlib

    try:
        diff = subprocess.run(["git", "diff", "HEAD"], capture_output=True, timeout=20, cwd=str(ROOT)).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return hashlib.sha1(diff).hexdigest()[:12] if diff else None


def machine(bench) -> dict:
    import psutil

    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "wrk": (_run(["wrk", "--version"]).splitlines() or ["?"])[0].split(" Copyright")[0],
        "git": _run(["git", "rev-parse", "--short", "HEAD"]) +
               (" (uncommitted changes)" if _run(["git", "status", "--porcelain", "--untracked-files=no"]) else ""),
        # The code measured: HEAD plus a digest of uncommitted changes to tracked files.
        "git_dirty_files": _run(["git", "status", "--porcelain", "--untracked-files=no"]).splitlines(),
        "git_diff_sha1": _diff_digest(),
        "loadavg_at_start": os.getloadavg(),
    }
    if bench.db is not None:
        try:
            info["postgres"] = bench.db.fetchval("SHOW server_version")
            info["postgres_max_connections"] = int(bench.db.fetchval("SHOW max_connections"))
        except Exception:
            pass
    try:
        import redis

        url = bench.env.get("REDIS_URL")
        if url:
            client = redis.Redis.from_url(url)
            info["redis"] = client.info("server")["redis_version"]
            client.close()
    except Exception:
        pass
    from importlib import metadata

    info["packages"] = {}
    for name in ("flask", "gunicorn", "celery", "kombu", "asyncpg", "pgdbm", "redis", "locust"):
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return info


def settings(bench) -> dict:
    out: dict = {}
    stack = bench.stack
    env = bench.env
    try:
        from config.settings import load_settings

        out["system"] = load_settings(env).redacted()
    except Exception as exc:
        out["system_error"] = repr(exc)
    if stack is not None:
        out["processes"] = {**stack.http_entries, **stack.celery}
        out["bench_overrides"] = stack.bench_settings
        out["procfile_entries_not_started"] = stack.skipped
        out["ports"] = stack.ports
        out["pg_stat_statements"] = stack.pgss
        out["embedded"] = {"postgres": stack.embedded_pg is not None, "redis": stack.embedded_redis is not None}
        try:
            from config.celery import celery_config
            from config.settings import load_settings

            cc = celery_config(load_settings(env))
            cc["broker_url"] = "(redacted)" if "@" in str(cc.get("broker_url")) else cc.get("broker_url")
            out["celery"] = cc
        except Exception as exc:
            out["celery_error"] = repr(exc)
    procfile = " ".join(out.get("processes", {}).values())
    out["web_concurrency"] = env.get("WEB_CONCURRENCY") or _procfile_default(procfile, "WEB_CONCURRENCY") or "2"
    out["gunicorn_threads"] = env.get("GUNICORN_THREADS") or "8"
    out["celery_concurrency"] = env.get("CELERY_CONCURRENCY") or _procfile_default(procfile, "CELERY_CONCURRENCY")
    keys = [k for k in env if k.startswith(("DB_", "GUNICORN_", "CELERY_", "WEB_", "RATE_LIMIT", "LOG_", "REGISTRY_",
                                            "FULFILMENT", "OUTBOX", "RESERVATION", "INVENTORY_", "UPSTREAM_"))]
    out["environment"] = {k: env[k] for k in sorted(keys)}
    return out


def _procfile_default(text: str, name: str) -> str | None:
    m = re.search(r"\$\{" + name + r":-(\d+)\}", text)
    return m.group(1) if m else None


def connection_budget(bench) -> dict:
    """Pool-owning processes (gunicorn workers, Celery pool children) x their DB_POOL_MAX, and the idle count."""
    import psutil

    from config.settings import load_settings

    stack = bench.stack
    if stack is None:
        return {}
    owners, budget, detail = 0, 0, []
    for name in list(stack.http_entries) + ["worker"]:
        proc = bench.sup.procs.get(name)
        if proc is None:
            continue
        try:
            children = psutil.Process(proc.pid).children()
        except psutil.Error:
            continue
        # The Procfile names each process with SERVICE_NAME, which sets its default pool ceiling.
        pool_max = load_settings({**bench.env, "SERVICE_NAME": name}).db_pool_max
        owners += len(children)
        budget += len(children) * pool_max
        detail.append(f"{name} {len(children)} x {pool_max}")
    idle = None
    if bench.stats is not None:
        idle = bench.stats.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' "
            "AND application_name NOT LIKE 'bench%' AND application_name <> 'pgbench'", bench.database)
    return {"pool_owners": owners, "budget": budget, "detail": ", ".join(detail), "idle_connections": idle}


def keep_logs(sup: Supervisor, dest: Path) -> dict:
    """Tails of every process log beside the report, how many error lines each had; the profiles."""
    pattern = re.compile(r"\[(error|critical)\s*\]|Traceback|\bERROR\b|\bCRITICAL\b|\"level\": \"(error|critical)\"")
    summary = {}
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(sup.logs.glob("*.log")):
        errors, tail = 0, []
        with open(path, errors="replace") as fh:
            for line in fh:
                if pattern.search(line):
                    errors += 1
                tail.append(line)
                if len(tail) > 400:
                    del tail[:200]
        (dest / path.name).write_text("".join(tail[-200:]))
        summary[path.stem] = {"errors": errors, "bytes": path.stat().st_size}
    profile.keep(sup.logs, dest)
    return summary


def ensure_wrk() -> None:
    """wrk is a Debian package: install it when missing and we may (root with apt-get), else say how."""
    from bench import wrk

    if wrk.available():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        sys.stderr.write("[bench] wrk is missing: apt-get install -y wrk\n")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": {**os.environ,
                 "DEBIAN_FRONTEND": "noninteractive"}}
        if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet)
    if not wrk.available():
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu), then run again")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    ensure_wrk()
    install_signal_handlers()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="oms-bench-"))
    os.chmod(workdir, 0o755)  # the embedded PostgreSQL runs as its own user
    sup = Supervisor(workdir, remove_workdir=not args.keep)
    sup.start_reaper()
    from bench.runner import Bench, log

    bench = Bench(cfg, sup, workdir)
    results = bench.results
    results.update(run_id=cfg["run_id"], started_at=stamp, config=cfg,
                   command=" ".join(["python -m bench"] + (argv if argv is not None else sys.argv[1:])))
    started = time.monotonic()
    rc = 0
    log(f"run {cfg['run_id']}: work folder {workdir}")
    try:
        try:
            bench.setup()
            results["machine"] = machine(bench)
            results["settings"] = settings(bench)
            results["connection_budget"] = connection_budget(bench)
            for phase in ["baselines", "read", "pipeline", "paced", "mixed", "placement"]:
                if bench.want(phase):
                    try:
                        {"baselines": bench.run_baselines, "read": bench.run_read, "pipeline": bench.run_pipeline,
                         "paced": bench.run_paced, "mixed": bench.run_mixed, "placement": bench.run_placement}[phase]()
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as exc:
                        bench.warn(f"phase {phase} failed: {exc!r}")
                        log(traceback.format_exc())
                        if bench.stack and bench.stack.celery and not bench.stack.workers_running():
                            bench.stack.start_workers()
            bench.run_checks()
        except KeyboardInterrupt:
            results["error"] = "interrupted (Ctrl-C)"
            rc = 130
        except SystemExit as exc:
            results["error"] = f"stopped by a signal (exit {exc.code})"
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:
            results["error"] = f"{exc!r}\n{traceback.format_exc()}"
            log(traceback.format_exc())
            rc = 1
        results.setdefault("machine", {})
        if not results["machine"]:
            try:
                results["machine"] = machine(bench)
            except Exception:
                pass
    finally:
        ignore_signals()
        try:
            bench.close()
        finally:
            sup.stop_all()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["logs"] = keep_logs(sup, out_dir / f"{stamp}-logs")
    checks = results.get("checks") or {}
    if rc == 0 and (not checks or any(isinstance(v, dict) and v.get("pass") is False for v in checks.values())):
        rc = 1
    try:
        results["evaluation"] = report.evaluate(results, cfg["clients"])
    except Exception as exc:
        results["evaluation_error"] = repr(exc)
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    try:
        text = report.markdown(results)
    except Exception:
        text = f"# Benchmark {cfg['run_id']}\n\nThe report could not be rendered:\n\n```\n{traceback.format_exc()}```\n"
    (out_dir / f"{stamp}.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    log(f"wrote {out_dir / (stamp + '.json')} and {out_dir / (stamp + '.md')} in {results['elapsed_s']:.0f} s")
    if args.keep:
        log(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return rc
