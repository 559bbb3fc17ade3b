"""This HTTP instance in the service registry: a heartbeat thread per gunicorn worker.

Each worker of an instance upserts the same row (service, instance URL), so the
instance stays listed while any of its workers lives. The master deletes the row
when it exits (config/gunicorn.conf.py ``on_exit``).
"""
from __future__ import annotations

import logging
import threading

from infra import registry, runtime
from infra.errors import Unavailable

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, *, service: str, url: str, interval: float):
        super().__init__(name="registry-heartbeat", daemon=True)
        self.service, self.url, self.interval = service, url, interval
        self.stopped = threading.Event()

    def beat(self) -> None:
        db = runtime.db()
        db.run(registry.heartbeat, db.manager(registry.SCHEMA), service=self.service, instance_id=self.url,
               url=self.url, timeout=min(self.interval, 2.0))

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
            except Unavailable:
                logger.warning("registry heartbeat failed; retrying", extra={"service": self.service})
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()


_heartbeat: Heartbeat | None = None


def start(*, service: str, url: str, interval: float) -> None:
    global _heartbeat
    if _heartbeat is None:
        _heartbeat = Heartbeat(service=service, url=url, interval=interval)
        _heartbeat.start()


def stop() -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


def deregister_now(*, dsn: str, service: str, url: str) -> None:
    """Delete this instance's row over a one-off connection (the master has no pool)."""
    import anyio
    import asyncpg
    from pgdbm import AsyncDatabaseManager, DatabaseConfig, TransactionManager

    async def delete():
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            # The manager only spells {{tables.*}}; the statement runs on this connection.
            names = AsyncDatabaseManager(DatabaseConfig(connection_string=dsn, schema=registry.SCHEMA))
            await registry.deregister(TransactionManager(conn, names), service=service, instance_id=url)
        finally:
            await conn.close()

    try:
        anyio.run(delete)
    except (OSError, asyncpg.PostgresError) as exc:
        logger.warning("could not deregister: %s", type(exc).__name__)
