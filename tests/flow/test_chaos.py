"""The chaos run (bench/chaos.py) in its short profile: the same code as ``make chaos``.

Each run starts its own system on embedded PostgreSQL and Redis (it freezes and wipes
them), so these tests need nothing from the session's servers.
"""
from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, ROOT


def _chaos(*args: str, timeout: float = 900) -> str:
    result = subprocess.run([PYTHON, "-m", "bench.chaos", "--profile", "short", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    report = result.stdout + "\n" + result.stderr[-4000:]
    assert result.returncode == 0, report
    return result.stdout


def _held(report: str) -> dict[str, str]:
    rows = [line.split("|")[1:3] for line in report.splitlines() if line.startswith("| ") and "|" in line[2:]]
    return {name.strip(): held.strip() for name, held in rows if held.strip() in ("yes", "**NO**")}


def test_every_fault_one_after_another_under_load_keeps_every_invariant():
    report = _chaos()
    held = _held(report)
    assert len(held) == 7 and set(held.values()) == {"yes"}, report
    for fault in ("SIGKILL a Celery pool child", "freeze Redis", "restart Redis with its data wiped",
                  "freeze PostgreSQL", "stop the SMTP server", "SIGKILL beat"):
        assert f"| {fault}" in report, report


def test_postgresql_frozen_past_the_retry_budget_while_tasks_run_every_order_completes():
    report = _chaos("--faults", "postgres-freeze")
    held = _held(report)
    assert held["every accepted order exists and is terminal"] == "yes", report
    assert held["stock conserved (stocked = on hand + fulfilled, reserved 0)"] == "yes", report
    assert held["drained: nothing pending, unconfirmed or unpublished"] == "yes", report
