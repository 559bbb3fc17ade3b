"""The Celery app (``celery -A workers.celery_app worker``).

Each pool child builds its own loop and pgdbm pool at ``worker_process_init`` and
closes them at ``worker_process_shutdown``, after its last task finished.
"""
from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from config.celery import celery_config
from config.settings import settings_or_exit
from workers import broker
from workers.liveness import LivenessFile

logger = logging.getLogger(__name__)

settings = settings_or_exit()
broker.install()  # a dropped Redis broker must not end the worker (workers/broker.py)
app = Celery("oms", include=["workers.tasks"])
app.conf.update(celery_config(settings))
app.steps["worker"].add(LivenessFile)
app.conf.beat_schedule = {
    "outbox-sweep": {"task": "outbox.sweep", "schedule": settings.outbox_sweep_seconds,
                     "options": {"queue": "outbox", "expires": settings.outbox_sweep_seconds * 2}},
    "expire-reservations": {"task": "orders.expire_reservations",
                            "schedule": max(1.0, min(30.0, settings.reservation_ttl_seconds / 4)),
                            "options": {"queue": "orders", "expires": 60}},
    # Nothing stranded by a lost message: see workers/tasks.py and the README ("Faults").
    "reconcile-orders": {"task": "orders.reconcile", "schedule": settings.reconcile_seconds,
                         "options": {"queue": "orders", "expires": settings.reconcile_seconds * 2}},
    "redeliver-notifications": {"task": "notifications.redeliver", "schedule": settings.reconcile_seconds,
                                "options": {"queue": "notifications", "expires": settings.reconcile_seconds * 2}},
}


@setup_logging.connect
def _logging(**_):
    from config import logging as logging_config

    logging_config.configure(
        service=os.environ.get("SERVICE_NAME", "worker"), level=settings.log_level, fmt=settings.log_format
    )


@worker_process_init.connect
def _start_runtime(**_):
    from config import tracing
    from infra import runtime
    from infra.errors import Unavailable

    # After fork, as the OpenTelemetry Celery instrumentation asks.
    tracing.configure(os.environ.get("SERVICE_NAME", "worker"))
    tracing.instrument_celery()

    try:
        runtime.start(settings, name=os.environ.get("SERVICE_NAME", "worker"))
    except Unavailable:
        logger.warning("database unavailable at start; the pool will be opened on demand")


@worker_process_shutdown.connect
def _stop_runtime(**_):
    from infra import runtime
    from services.notifications import service as notifications

    notifications.use_transports(None)  # says QUIT to the SMTP server
    runtime.stop()
