"""The Celery app (``celery -A workers.celery_app worker``).

Each pool child is set up by ``infra.runtime.boot`` at ``worker_process_init`` (its own
loop and pgdbm pool) and closed at ``worker_process_shutdown``, after its last task; the
main process and beat only configure logging and tracing. Building the app connects to
nothing. The beat schedule is the domains' periodic tasks (their ``wiring.py``) and the
outbox sweep.
"""
from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from config.celery import celery_config
from config.settings import settings_or_exit
from services import wiring
from workers import broker
from workers.liveness import LivenessFile

settings = settings_or_exit()
broker.install()  # a dropped Redis broker must not end the worker (workers/broker.py)
app = Celery("oms", include=["workers.tasks"])
app.conf.update(celery_config(settings))
app.steps["worker"].add(LivenessFile)


def beat_schedule() -> dict:
    def entry(task: str, every: float) -> dict:
        queue = task.partition(".")[0]
        return {"task": task, "schedule": every, "options": {"queue": queue, "expires": every * 2}}

    schedule = {"outbox.sweep": entry("outbox.sweep", settings.outbox_sweep_seconds)}
    for domain in wiring():
        for periodic in domain.periodic:
            schedule[periodic.task] = entry(periodic.task, periodic.every(settings))
    return schedule


app.conf.beat_schedule = beat_schedule()
NAME = settings.service_name or "worker"


@setup_logging.connect
def _main_process(**_):
    from infra import runtime

    runtime.boot(NAME, settings=settings, connect=False)


@worker_process_init.connect
def _pool_process(**_):
    from infra import runtime
    from workers.relay import publish

    # After fork, as the OpenTelemetry Celery instrumentation asks.
    runtime.boot(NAME, settings=settings, publisher=publish)


@worker_process_shutdown.connect
def _stop_pool_process(**_):
    from infra import runtime
    from workers.relay import publisher

    # What the last tasks committed goes out before the pool closes; then the kept transports.
    runtime.shutdown(publisher.flush, *(domain.close for domain in wiring() if domain.close))
