"""A small synchronous PostgreSQL client for the bench: asyncpg on an event loop thread of its own.

The bench reads statistics through the ``postgres`` database, not the application's, so its own
queries add nothing to the application database's ``xact_commit`` or ``pg_stat_statements``.
"""
from __future__ import annotations

import asyncio
import threading
import asyncpg

from config import dburl


with_database = dburl.with_database
database_of = dburl.database_name


class PgClient:
    def __init__(self, url: str, *, application_name: str = "bench-monitor"):
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-pg", daemon=True)
        self._thread.start()
        self._conn = self._call(asyncpg.connect(url, timeout=10,
                                                server_settings={"application_name": application_name}))

    def _call(self, coro, timeout: float = 125.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def fetch(self, sql: str, *args, timeout: float = 120.0) -> list[dict]:
        return [dict(r) for r in self._call(self._conn.fetch(sql, *args, timeout=timeout), timeout + 5)]

    def fetchrow(self, sql: str, *args) -> dict | None:
        rows = self.fetch(sql, *args)
        return rows[0] if rows else None

    def fetchval(self, sql: str, *args):
        return self._call(self._conn.fetchval(sql, *args))

    def execute(self, sql: str, *args, timeout: float = 300.0) -> str:
        return self._call(self._conn.execute(sql, *args, timeout=timeout), timeout + 5)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._call(self._conn.close(timeout=5), 10)
            except Exception:
                pass
            self._conn = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
