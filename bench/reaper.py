"""``python -m bench.reaper PID STATE``: stop what a dead bench left running.

Started by the bench in a session of its own. It watches the bench's pid; when
that process is gone without having stopped this reaper first (SIGKILL, a crash
of the interpreter), it stops every process group and embedded server listed in
the state file. A normal exit of the bench stops the reaper with SIGTERM.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import psutil


def _parent_alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(argv: list[str]) -> int:
    pid, state_file = int(argv[0]), Path(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        created = None
    while created is not None and _parent_alive(pid, created):
        time.sleep(0.5)
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return 0
    from devtools import embedded
    from devtools.launcher import kill_group

    sys.stderr.write(f"bench.reaper: bench {pid} is gone; stopping {state}\n")
    kill_group(*state.get("groups", []), timeout=15.0)
    embedded.stop_in(*reversed(state.get("server_dirs", [])))
    if state.get("workdir"):
        shutil.rmtree(state["workdir"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
