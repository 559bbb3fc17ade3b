"""The one wiring point of a process: settings, logging, tracing, the database bridge,
Redis and the publisher of committed events.

``boot()`` sets a process up and is called from one place per kind of process:
gunicorn's ``post_worker_init`` (config/gunicorn.conf.py), Celery's
``worker_process_init`` (workers/celery_app.py) and the CLI (app/cli.py). ``get()``
starts the runtime lazily otherwise (tests). A PID check makes a forked child build its
own instead of touching its parent's loop and pool. ``shutdown()`` runs only once the
process has stopped serving (gunicorn ``worker_exit``, Celery ``worker_process_shutdown``).

``role`` is what the process logs in to PostgreSQL as (infra/roles.py): an HTTP
service as its domain (or the gateway), migrate as the owner, and anything else - Celery
workers, the CLI, tests - as the worker role, acting as each domain's role in turn.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

import redis

from config.settings import SCHEMAS, Settings, load_settings
from infra import roles
from infra.db import Database
from infra.errors import Unavailable

logger = logging.getLogger(__name__)

# The shared, non-domain tables (service registry, ...) live in schema public.
SHARED_SCHEMA = "public"


@dataclass
class Runtime:
    name: str
    role: str
    settings: Settings
    db: Database
    redis: redis.Redis
    pid: int

    def publish(self, schema: str, events: list[dict]) -> None:
        """Hand committed outbox events to the relay; without one they wait for the sweep."""
        if events and _publisher is not None:
            _publisher(schema, events)

    def close(self) -> None:
        self.db.close()
        self.redis.close()


_runtime: Runtime | None = None
# What the last start() was asked for, so a lazy start after a failed one (database down
# when a gunicorn worker booted) logs in as the same role.
_intent: tuple[Settings, str, str] | None = None
_lock = threading.Lock()
# The relay that publishes committed outbox events (workers.relay.publish). The
# wiring sets it; services call Runtime.publish and never import Celery.
_publisher: Callable[[str, list[dict]], None] | None = None


def set_publisher(publisher: Callable[[str, list[dict]], None] | None) -> None:
    global _publisher
    _publisher = publisher


def has_publisher() -> bool:
    return _publisher is not None


def build(settings: Settings, *, name: str, role: str = roles.WORKER) -> Runtime:
    login = roles.login(settings, role)
    db = Database(
        dsn=login.dsn,
        switch_roles=login.switch,
        # A login role that is a superuser defeats every grant: refused where it matters.
        superuser="allow" if role == roles.OWNER else (
            "warn" if settings.app_env in ("development", "test") else "refuse"),
        schemas=SCHEMAS + (SHARED_SCHEMA,),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.db_timeout,
        application_name=f"oms-{name}",
        statement_timeout_ms=settings.db_statement_timeout_ms,
        lock_timeout_ms=settings.db_lock_timeout_ms,
        pooler=settings.database_pooler,
        statement_cache_size=settings.db_statement_cache_size,
    )
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        health_check_interval=30,
        decode_responses=True,
    )
    return Runtime(name=name, role=role, settings=settings, db=db, redis=client, pid=os.getpid())


def start(settings: Settings | None = None, *, name: str | None = None, role: str | None = None) -> Runtime:
    """Build and start this process's runtime (idempotent within one process)."""
    global _runtime, _intent
    with _lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            return _runtime
        # A runtime inherited through fork belongs to the parent: leave its loop and
        # pool untouched and build our own, from the same (plain-data) settings.
        inherited = _runtime
        known = (inherited.settings, inherited.name, inherited.role) if inherited else _intent
        settings = settings or (known[0] if known else load_settings())
        name = name or (known[1] if known else settings.service_name or "cli")
        role = role or (known[2] if known else roles.WORKER)
        _intent = (settings, name, role)
        runtime = build(settings, name=name, role=role)
        runtime.db.start()
        _runtime = runtime
        return runtime


def current() -> Runtime | None:
    """This process's runtime if it has been started here, without starting one."""
    runtime = _runtime
    return runtime if runtime is not None and runtime.pid == os.getpid() else None


def get() -> Runtime:
    runtime = _runtime
    if runtime is not None and runtime.pid == os.getpid():
        return runtime
    return start()


def stop() -> None:
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
    if runtime is not None and runtime.pid == os.getpid():
        runtime.close()


def db():
    """The process's database bridge."""
    return get().db


def boot(name: str, *, settings: Settings | None = None, role: str = roles.WORKER,
         publisher: Callable[[str, list[dict]], None] | None = None, connect: bool = True) -> Runtime | None:
    """Set this process up: logging, tracing, the publisher, then the loop and the pool.

    ``name`` names the process in logs, traces and ``application_name``; ``role`` is what
    it logs in to PostgreSQL as. With ``connect=False`` (a process that serves nothing:
    Celery's main process, beat) the pool is not opened. A database that is down at start
    is not fatal: the pool is opened on first use, and until then calls answer
    ``Unavailable``.
    """
    from config import logging as logging_config
    from config import tracing
    from config.settings import settings_or_exit

    settings = settings or settings_or_exit()
    logging_config.configure(service=name, level=settings.log_level, fmt=settings.log_format)
    tracing.configure(name, sample_ratio=settings.trace_sample_ratio)
    tracing.instrument_celery()  # trace context into the tasks this process publishes or runs
    if publisher is not None:
        set_publisher(publisher)
    if not connect:
        return None
    try:
        return start(settings, name=name, role=role)
    except Unavailable:
        logger.warning("database unavailable at start; the pool will be opened on demand")
        return None


def shutdown(*closers: Callable[[], None]) -> None:
    """Close what the process kept open (``closers`` first, then the pool and Redis)."""
    for close in closers:
        try:
            close()
        except Exception:  # one thing failing to close must not keep the rest open
            logger.warning("closing failed at shutdown", exc_info=True)
    stop()
