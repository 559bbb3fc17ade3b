"""Worker liveness without the broker: the worker touches a file while its consumer runs.

Enabled by WORKER_LIVENESS_FILE (Settings). Probe (compose healthcheck, Kubernetes exec probe):
``python -m workers.liveness /tmp/worker-alive --max-age 30``; exit 0 while fresh.
Unlike ``celery inspect ping`` it does not mark every worker dead while Redis is down.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from celery import bootsteps

from config.settings import load_settings


class LivenessFile(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        settings = load_settings()
        self.path = settings.worker_liveness_file
        self.interval = settings.worker_liveness_interval
        self.tref = None

    def start(self, worker):
        if self.path:
            self.touch()
            self.tref = worker.timer.call_repeatedly(self.interval, self.touch, priority=10)

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
        if self.path:
            Path(self.path).unlink(missing_ok=True)

    def touch(self):
        Path(self.path).touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.liveness")
    parser.add_argument("path")
    parser.add_argument("--max-age", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        age = time.time() - os.stat(args.path).st_mtime
    except FileNotFoundError:
        sys.stderr.write(f"not alive: {args.path} does not exist\n")
        return 1
    if age > args.max_age:
        sys.stderr.write(f"not alive: {args.path} is {age:.0f}s old\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
