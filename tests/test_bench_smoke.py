"""Smoke test of the benchmark harness (``python -m bench``) with a tiny duration.

Benchmarks are not part of ``make test``: this module is collected only with
``BENCH_SMOKE=1`` (``BENCH_SMOKE=1 make test PYTEST_ARGS=tests/test_bench_smoke.py``;
tests/conftest.py leaves it out otherwise, so a plain run shows no skip for it). They check
that one short run of every scenario writes both reports with every section and
its plots and passes its correctness checks, and that no process of the run outlives it, however
the run ends (normal exit, SIGTERM, SIGKILL).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(900)]

TINY = ["--duration", "2", "--clients", "2,4", "--users", "4", "--products", "3", "--settle", "1",
        "--locust-users", "2", "--drain-timeout", "120", "--overload-clients", "8"]


def _env() -> dict:
    # The run starts its own embedded servers and sets the production settings it measures:
    # the test session's must not leak in.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "APP_ENV", "JWT_SECRET_KEY", "BENCH_PROFILE")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *TINY, "--out", str(out)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _workdir(stderr: str) -> str:
    match = re.search(r"work folder (\S+)", stderr)
    assert match, stderr[-3000:]
    return match.group(1)


def _leftovers(workdir: str, sid: int) -> list[str]:
    """Processes of that run: in its session, or naming its work folder (PostgreSQL: its cwd)."""
    found = []
    for proc in psutil.process_iter(["pid", "status", "cmdline", "environ", "cwd"]):
        info = proc.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            in_session = os.getsid(info["pid"]) == sid
        except OSError:
            in_session = False
        cmdline = " ".join(info["cmdline"] or [])
        if (in_session or workdir in cmdline or (info["cwd"] or "").startswith(workdir)
                or (info["environ"] or {}).get("OMS_DATA_DIR", "").startswith(workdir)):
            found.append(f"{info['pid']} {cmdline[:120]}")
    return found


def _wait_no_leftovers(workdir: str, sid: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    left = _leftovers(workdir, sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _leftovers(workdir, sid)
    return left


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 240) -> str:
    """Read stderr (on a thread, to the end) until ``pattern`` shows up; returns what was read so far."""
    lines: list[str] = []

    def pump():
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = "".join(lines)
        if re.search(pattern, seen):
            return seen
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"never saw {pattern!r}:\n{''.join(lines)[-3000:]}")


def test_a_tiny_run_writes_both_reports_passes_its_checks_and_leaves_nothing(tmp_path):
    proc = _start(tmp_path)
    out, err = proc.communicate(timeout=800)
    assert proc.returncode == 0, err[-5000:]
    workdir = _workdir(err)
    reports = sorted(tmp_path.glob("*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".md").exists()
    results = json.loads(reports[0].read_text())
    phases = results["phases"]
    expected = ["read@2", "read@4", "pipeline@2", "pipeline@4", "overload@8", "placement@2", "placement@4",
                "backlog-drain"]
    if (Path(sys.executable).parent / "locust").exists():  # requirements-bench.txt
        expected.append("mixed")
    for name in expected:
        assert name in phases, (name, sorted(phases))
    assert any(n.startswith("paced@") for n in phases)
    assert phases["read@4"]["ok"] > 0 and phases["placement@4"]["db"]["accepted"] > 0
    assert phases["pipeline@4"]["db"]["final_status"].get("fulfilled", 0) > 0  # after the drain
    assert phases["pipeline@4"]["connections"]["peak_total"] > 0
    assert phases["pipeline@4"]["db_work"]["xact_commit_per_unit"] > 0
    assert phases["pipeline@4"]["db_work"]["statements"]["reset_per_unit"] is not None
    base = results["baselines"]
    assert base["hello"]["ok_rps"] > 0 and base["pgbench"]["runs"]["4"]["tps"] > 0
    assert base["chain"]["chains_per_s"] > 0 and base["chain"]["hops"] == len(results["pipeline_hops"])
    assert base["chain_batched"]["chains_per_s"] > 0 and base["chain_batched"]["chains_per_message"] > 1
    for x in (base["hello"], base["pgbench"], base["chain"], base["chain_batched"]):
        assert x["cpu_per_unit"]["system_ms"] > 0
    # CPU per fulfilled order over every process of the system, each named.
    paced = next(x for n, x in phases.items() if n.startswith("paced@"))
    for x in (phases["pipeline@4"], paced, phases["overload@8"]):
        cpu = x["cpu_per_unit"]
        assert cpu["unit"] == "fulfilled order" and cpu["system_ms"] > 0, cpu
        assert {"gateway", "orders", "inventory", "worker", "beat", "postgres", "postgres (background)", "redis",
                "smtp-sink"} <= set(cpu["by_process_ms"]), cpu
    assert phases["read@4"]["cpu_per_unit"]["unit"] == "request"
    over = results["evaluation"]["overload"]
    assert over["accepted"] > 0 and over["lost"] == 0, over
    assert paced["db"]["over_time"] and phases["overload@8"]["db"]["over_time"]
    targets = {t["target"]: t for t in results["evaluation"]["targets"]}
    assert len(targets) == 12 and all(t["see"] for t in targets.values())
    assert targets["correctness checks pass"]["pass"] is True
    plots = results["plots"]
    assert set(plots) == {"throughput", "cpu", "latency"}, results["warnings"]
    assert all(v["pass"] for v in results["checks"].values() if isinstance(v, dict) and "pass" in v), \
        results["checks"]
    assert results["machine"]["cores"] and results["settings"]["processes"]
    assert results["settings"]["system"]["app_env"] == "production"
    assert results["settings"]["bench_overrides"]["JWT_SECRET_KEY"] == "(random per run)"
    profiled = [n for n, x in phases.items() if "profile" in x]  # the reference client count is 4
    assert "read@4" in profiled and "placement@4" in profiled and any(n.startswith("paced@") for n in profiled)
    assert not phases["read@4"]["profile"]["errors"], phases["read@4"]["profile"]["errors"]
    text = reports[0].with_suffix(".md").read_text()
    for heading in ("## Targets (issue 6)", "### Why: CPU per unit of work", "#### CPU ms per unit by process",
                    "## Read", "## Placement", "## Pipeline", "## Overload and admission control", "## Baselines",
                    "## Connections", "## Database work", "## Profiles", "## Correctness at the end",
                    "## Settings"):
        assert heading in text
    assert "batched bare Celery chain" in text
    for path in plots.values():  # PNGs beside the Markdown, linked relatively
        assert f"]({path})" in text and (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert text.strip() in out  # the Markdown is printed too
    assert not Path(workdir).exists()
    assert _wait_no_leftovers(workdir, proc.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_run_stopped_by_a_signal_mid_scenario_stops_everything_it_started(tmp_path, sig):
    proc = _start(tmp_path)
    try:
        err = _wait_for_line(proc, r"phase read@")
        proc.send_signal(sig)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    workdir = _workdir(err)
    assert _wait_no_leftovers(workdir, proc.pid) == []
    assert list(tmp_path.glob("*.md")), "a partial report is still written"


def test_a_killed_run_is_cleaned_up_by_its_reaper(tmp_path):
    proc = _start(tmp_path)
    try:
        err = _wait_for_line(proc, r"phase read@")
    finally:
        proc.kill()  # SIGKILL: no finally of the bench runs
        proc.wait()
    workdir = _workdir(err)
    # Children outside the bench's session (own sessions) are the reaper's to stop.
    left = [line for line in _wait_no_leftovers(workdir, -1, timeout=90)]
    assert left == []
