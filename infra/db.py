"""One event loop, one pgdbm shared pool and one manager per schema, per OS process.

pgdbm is async and our views and tasks are sync: an anyio blocking portal runs the
loop thread, and sync code submits coroutines to it (``run``). Every call has a deadline, and every way the
bridge can fail (pool exhausted, database down, bridge closed) surfaces as
``Unavailable`` so the HTTP layer answers 503 instead of hanging or 500ing.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import itertools
import json
import logging
import os
import threading
from contextlib import ExitStack, asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Mapping, TypeVar

import anyio
import asyncpg
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pgdbm import AsyncDatabaseManager, DatabaseConfig, TransactionManager
from pgdbm.core import NEUTRAL_SEARCH_PATH
from pgdbm.errors import ConnectionError as PgdbmConnectionError
from pgdbm.errors import PoolError, QueryError

from infra.errors import Unavailable
from infra.roles import ident

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Failures that mean "the database cannot serve us right now", not "your query is wrong".
_OUTAGE_ERRORS = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    PgdbmConnectionError,
    PoolError,
)


def _reason(exc: BaseException) -> str:
    """The innermost message of ``exc`` (pgdbm wraps asyncpg's), for a log line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what pgdbm wrapped in it) means the database cannot serve now."""
    if isinstance(exc, _OUTAGE_ERRORS):
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and "closed" in str(exc):
        return True  # "pool is closed", "connection is closed"
    cause = exc.__cause__
    return isinstance(exc, QueryError) and cause is not None and is_outage(cause)


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _keep_session(connection) -> None:
    """Pool reset hook: nothing to undo (see Database._create_pool)."""


PGBOUNCER = "pgbouncer"  # Database(pooler=...): PgBouncer in transaction pooling mode
# What every connection is set to: startup parameters on a direct connection, the login
# role's defaults behind a pooler (``role_defaults``, which ``migrate`` applies).
SEARCH_PATH = NEUTRAL_SEARCH_PATH  # pgdbm's pin: an unqualified table name fails
IDLE_IN_TRANSACTION_MS = 30_000


def role_defaults(*, statement_timeout_ms: int, lock_timeout_ms: int) -> dict[str, str]:
    """The session settings a process wants, as ``ALTER ROLE ... SET`` gives them."""
    return {"search_path": SEARCH_PATH, "jit": "off", "statement_timeout": str(statement_timeout_ms),
            "lock_timeout": str(lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)}


class _PooledConfig(DatabaseConfig):
    """pgdbm's configuration for a pool behind PgBouncer (before 1.21 it refuses any startup
    parameter but a few, ``unsupported startup parameter: search_path``): application_name
    alone goes at connection start; the rest are the login role's defaults."""

    def get_server_settings(self) -> dict[str, str]:
        return {"application_name": (self.server_settings or {}).get("application_name", "oms")}


class PoolerSetupError(RuntimeError):
    """Behind a pooler, the login role lacks the defaults ``migrate`` gives it."""


class _BridgeClosed(Exception):
    """The loop stopped (or cancelled the call) while the process was shutting down."""


class SuperuserRefused(RuntimeError):
    """This process logged in as a superuser where only the migrations may."""


_savepoints = itertools.count(1)


class ScopedManager(AsyncDatabaseManager):
    """pgdbm's schema-scoped manager that, given ``role``, acts as that role for each unit of work.

    A process serving several domains over one pool logs in as a role with no table
    privileges of its own; each connection this manager hands out (``acquire``, hence
    pgdbm's single-statement methods, and ``transaction``) is inside a transaction begun
    with ``BEGIN; SET LOCAL ROLE <role>`` - one round trip, like BEGIN alone - so one
    domain's SQL cannot read another's tables. The role ends with the transaction: nothing
    stays on the pooled connection (and PgBouncer in transaction mode is fine). Without
    ``role`` it is pgdbm's manager unchanged.
    """

    def __init__(self, *, pool: asyncpg.Pool, schema: str, role: str | None = None):
        super().__init__(pool=pool, schema=schema)
        self.role = role
        self._begin = f"BEGIN; SET LOCAL ROLE {ident(role)}" if role else None

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with super().acquire() as conn:
            if self._begin is None:
                yield conn
                return
            try:
                await conn.execute(self._begin)
                yield conn
            except BaseException:
                await _rollback(conn)
                raise
            await conn.execute("COMMIT")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionManager]:
        if self._begin is None:
            async with super().transaction() as tx:
                yield tx
            return
        async with self.acquire() as conn:
            yield _RoleTransaction(conn, self)


class _RoleTransaction(TransactionManager):
    """pgdbm's transaction wrapper, with savepoints of its own: asyncpg refuses its nested
    ``transaction()`` inside a transaction it did not begin."""

    def __init__(self, conn, manager: ScopedManager):
        super().__init__(conn, manager)
        self._manager = manager

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionManager]:
        conn, name = self.connection, f"oms_savepoint_{next(_savepoints)}"
        await conn.execute(f"SAVEPOINT {name}")
        try:
            yield _RoleTransaction(conn, self._manager)
        except BaseException:
            await conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            raise
        await conn.execute(f"RELEASE SAVEPOINT {name}")


async def _rollback(conn) -> None:
    """End a failed unit of work; the error that failed it is what the caller raises."""
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute("ROLLBACK")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        # A query being cancelled (a deadline), or a broken connection: the pool's
        # release rolls back once the cancellation is through, or discards the connection.
        logger.debug("rollback deferred to the pool: %s", type(exc).__name__)


class Database:
    """The per-process loop, pool and schema managers. Create after fork; close after serving."""

    def __init__(
        self,
        *,
        dsn: str,
        schemas: tuple[str, ...],
        min_size: int,
        max_size: int,
        timeout: float,
        application_name: str,
        statement_timeout_ms: int = 10_000,
        lock_timeout_ms: int = 3_000,
        switch_roles: Mapping[str, str] | None = None,
        superuser: Literal["allow", "warn", "refuse"] = "allow",
        pooler: str = "",
        statement_cache_size: int | None = None,
    ):
        """``switch_roles``: schema -> the role its manager acts as (a worker's login, see
        infra/roles.py). ``superuser``: what to do when the login turns out to be one.
        ``pooler``: ``""`` for a direct connection, ``PGBOUNCER`` behind PgBouncer in
        transaction mode (DATABASE_POOLER). ``statement_cache_size``: asyncpg's named
        statements per connection; default 1000 direct, 0 behind a pooler."""
        self.dsn = dsn
        self.schemas = schemas
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.application_name = application_name
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.switch_roles = dict(switch_roles or {})
        self.superuser = superuser
        if pooler not in ("", PGBOUNCER):
            raise ValueError(f"unknown pooler {pooler!r}")
        self.pooler = pooler
        self.statement_cache_size = (0 if pooler else 1000) if statement_cache_size is None else statement_cache_size
        self.login_role: str | None = None
        self.pid = os.getpid()
        self.pool: asyncpg.Pool | None = None
        self.managers: dict[str, ScopedManager] = {}
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._closed = False
        self.inflight = 0  # bridged calls in progress; above max_size they wait for a connection

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "Database":
        with self._lock:
            if self._portal is not None:
                return self
            self._portal = self._stack.enter_context(start_blocking_portal(backend="asyncio"))
            try:
                self.pool = self._portal.call(self._with_deadline, self._create_pool, self.timeout)
                self._loop = self._portal.call(_running_loop)
            except BaseException as exc:
                self._stack.close()
                self._stack = ExitStack()
                self._portal = None
                if isinstance(exc, TimeoutError) or is_outage(exc):
                    logger.warning("database pool did not start: %s", _reason(exc))
                    raise Unavailable("database is unavailable") from None
                raise
            self.managers = {
                s: ScopedManager(pool=self.pool, schema=s, role=self.switch_roles.get(s)) for s in self.schemas
            }
            logger.info(
                "database pool started",
                extra={"pool_min": self.min_size, "pool_max": self.max_size, "pid": self.pid,
                       "login_role": self.login_role},
            )
            return self

    async def _create_pool(self) -> asyncpg.Pool:
        # Behind PgBouncer in transaction mode consecutive transactions of one client run on
        # any of its server connections, so nothing may outlive a transaction:
        # - named prepared statements (asyncpg's statement cache): statement_cache_size=0
        #   makes asyncpg use the unnamed statement, parsed again with each execution in the
        #   same message, so it never meets another server connection (asyncpg's
        #   max_cached_statement_lifetime then has nothing to expire);
        # - session settings: the search_path pin, jit and the timeouts are not startup
        #   parameters there (PgBouncer refuses them) but the login role's defaults, which
        #   the server applies to each of PgBouncer's connections (_check_login checks them).
        # The rest holds in both modes: a worker's role is SET LOCAL (infra/db.py
        # ScopedManager), advisory locks are transaction-scoped (inventory) or taken by
        # migrate on a direct connection, and nothing LISTENs, keeps a cursor outside a
        # transaction, creates temporary tables or SETs a session setting.
        config = (_PooledConfig if self.pooler else DatabaseConfig)(
            connection_string=self.dsn,
            min_connections=self.min_size,
            max_connections=self.max_size,
            # The deadline of each bridged call bounds commands; this is a backstop.
            command_timeout=max(self.timeout * 2, 10.0),
            statement_timeout_ms=self.statement_timeout_ms,
            lock_timeout_ms=self.lock_timeout_ms,
            idle_in_transaction_session_timeout_ms=IDLE_IN_TRANSACTION_MS,
            server_settings={"application_name": self.application_name},
            statement_cache_size=self.statement_cache_size,
            # Behind a pooler pgdbm's check of its pin would ask for a startup parameter: ours instead.
            shared_pool_search_path=None if self.pooler else SEARCH_PATH,
            retry_attempts=1,
        )
        pool = await AsyncDatabaseManager.create_shared_pool(config)
        # asyncpg sends a reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL)
        # each time a connection goes back to the pool: one more round trip and one more
        # transaction per unit of work. Nothing of ours leaves session state behind (no
        # SET, LISTEN, cursors or unreleased advisory locks; a worker's SET LOCAL ROLE ends
        # with its transaction; open transactions are still rolled back by asyncpg), so we
        # skip it. pgdbm does not pass asyncpg's ``reset=`` argument through, hence the attribute.
        # A commit fewer per release: part of 30.6 -> ~12 commits/fulfilled order; guard: tests/test_library_guards.py
        if hasattr(pool, "_reset"):
            pool._reset = _keep_session
        try:
            await self._check_login(pool)
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _check_login(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT current_user AS login, rolsuper AS super, "
                "(SELECT coalesce(jsonb_object_agg(name, setting), '{}') FROM pg_settings "
                " WHERE name = ANY($1::text[]))::text AS settings "
                "FROM pg_roles WHERE rolname = current_user", list(role_defaults(statement_timeout_ms=0,
                                                                                 lock_timeout_ms=0)))
        self.login_role = row["login"]
        if self.pooler:
            self._check_pooled_session(json.loads(row["settings"]))
        if not row["super"] or self.superuser == "allow":
            return
        if self.superuser == "refuse":
            raise SuperuserRefused(
                f"logged in to PostgreSQL as {row['login']!r}, a superuser: only `python -m app migrate` may; "
                "see the README, \"Database roles\"")
        logger.warning("logged in to PostgreSQL as a superuser; only the migrations should",
                       extra={"login_role": row["login"]})

    def _check_pooled_session(self, have: dict[str, str]) -> None:
        """Behind a pooler: the search_path pin must be in force (a role default), else
        unqualified names would resolve; other differences from what this process asks
        for are logged (a role default is one value for every process of that role)."""
        want = role_defaults(statement_timeout_ms=self.statement_timeout_ms, lock_timeout_ms=self.lock_timeout_ms)
        if [p.strip() for p in have.get("search_path", "").split(",")] != [SEARCH_PATH]:
            raise PoolerSetupError(
                f"behind {self.pooler} the search_path of login {self.login_role!r} is {have.get('search_path')!r}, "
                f"not {SEARCH_PATH!r}: it comes from the role's defaults, which `python -m app migrate` sets")
        differ = {name: {"role_default": have.get(name), "asked": value}
                  for name, value in want.items() if have.get(name) != value}
        if differ:
            logger.warning("behind %s these settings are the login role's defaults, not this process's", self.pooler,
                           extra={"settings": differ, "login_role": self.login_role})

    def close(self) -> None:
        """Close the pool, then stop the loop. Call only once the process stopped serving."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal, self._portal = self._portal, None
            self._loop = None
            if portal is None:
                return
            try:
                if self.pool is not None and os.getpid() == self.pid:
                    portal.call(self._close_pool)
            except Exception:  # the process is exiting: log and carry on stopping the loop
                logger.warning("database pool did not close cleanly", exc_info=True)
            finally:
                self._stack.close()
                logger.info("database pool closed", extra={"pid": self.pid})

    async def _close_pool(self) -> None:
        with anyio.move_on_after(self.timeout):
            await self.pool.close()
            return
        self.pool.terminate()

    @property
    def running(self) -> bool:
        return self._portal is not None and not self._closed

    # -- the bridge ------------------------------------------------------------
    def manager(self, schema: str) -> ScopedManager:
        return self.managers[schema]

    def run(
        self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> T:
        """Run ``await fn(*args, **kwargs)`` on this process's loop and return its result.

        Raises ``Unavailable`` if the bridge is closed, the deadline passes (pool
        exhausted, lock waits, a slow database) or the database cannot be reached.
        """
        if os.getpid() != self.pid:
            # asyncio objects do not survive fork(): a child must build its own.
            raise RuntimeError("Database used in a forked child; build one per process")
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            raise Unavailable("database bridge is closed")
        deadline = self.timeout if timeout is None else timeout
        self.inflight += 1  # a gauge, not an invariant: unlocked increments are fine
        try:
            return self._submit(loop, self._with_deadline(functools.partial(fn, *args, **kwargs), deadline),
                                deadline)
        except TimeoutError:
            logger.warning("database call timed out", extra={"timeout": deadline})
            raise Unavailable("database did not answer in time") from None
        except _BridgeClosed:
            raise Unavailable("database bridge is closed") from None
        except Exception as exc:
            if is_outage(exc):
                logger.warning("database unavailable: %s", type(exc).__name__)
                raise Unavailable("database is unavailable") from None
            raise
        finally:
            self.inflight -= 1

    @staticmethod
    def _submit(loop: asyncio.AbstractEventLoop, coro, deadline: float):
        """Run ``coro`` as a task on ``loop`` in the caller's context; wait for its result.

        Written by hand rather than ``portal.call``: anyio's portal makes a synchronous
        round trip to the loop just to spawn the task, then waits for the result - two
        cross-thread hand-offs per query, measured at a fifth of a service's CPU.
        ``asyncio.run_coroutine_threadsafe`` makes one but drops the caller's context
        variables (request id, trace context), so this is that function plus
        ``context=``. The portal still owns the loop thread and its lifecycle.
        """
        result: concurrent.futures.Future = concurrent.futures.Future()
        context = contextvars.copy_context()

        def spawn():
            task = loop.create_task(coro, context=context)

            def done(t: asyncio.Task):
                if t.cancelled():
                    result.set_exception(_BridgeClosed())
                elif t.exception() is not None:
                    result.set_exception(t.exception())
                else:
                    result.set_result(t.result())

            task.add_done_callback(done)

        try:
            loop.call_soon_threadsafe(spawn)
        except RuntimeError:  # "Event loop is closed"
            coro.close()
            raise _BridgeClosed() from None
        try:
            # The deadline is enforced on the loop; this margin only guards a stuck loop.
            return result.result(timeout=deadline + 5.0)
        except concurrent.futures.TimeoutError:
            raise TimeoutError() from None

    @staticmethod
    async def _with_deadline(call, deadline):
        async with asyncio.timeout(deadline):
            return await call()

