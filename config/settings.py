"""Settings read once from the environment, with development defaults.

Secrets have development defaults only; with ``APP_ENV=production`` a missing
secret stops the process at start with one line naming the variable, and in any
environment but ``development`` so does a JWT secret that is the development one or
shorter than 32 bytes.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from dataclasses import dataclass, field, fields
from typing import Mapping

SERVICES = ("users", "orders", "inventory", "notifications")
SCHEMAS = SERVICES  # one PostgreSQL schema per domain, named after it

DEFAULT_PORTS = {"gateway": 8000, "users": 8001, "orders": 8002, "inventory": 8003, "notifications": 8004,
                 "web": 8005}
# The web console (app/web): a client of the gateway that holds no database pool, no token
# signing key and no place in the service registry; the gateway finds it at WEB_URL.
# The console calls the API on the gateway's second listener (GATEWAY_CONSOLE_PORT; read by
# config/gunicorn.conf.py), whose threads are not the ones that wait on the console's pages.
GATEWAY_CONSOLE_PORT = 8006
WEB = "web"

_DEV_SECRETS = {"JWT_SECRET_KEY": "dev-only-jwt-secret-change-me-0123456789abcdef",
                "WEB_SECRET_KEY": "dev-only-web-secret-change-me-0123456789abcdef"}
_REQUIRED_IN_PRODUCTION = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY")
_REQUIRED_IN_PRODUCTION_BY_SERVICE = {WEB: ("REDIS_URL", "WEB_SECRET_KEY")}
MIN_JWT_SECRET_BYTES = 32  # HS256 keys shorter than its 256-bit hash can be brute-forced offline

# DB_POOL_MAX when it is not set, by SERVICE_NAME: the gateway only reads the registry,
# a Celery pool process runs one task at a time (plus the outbox flusher), and the
# notifications API is read lightly. Under `make run`: 2 + 3 x 4 + 2 + 2 x 2 = 20.
POOL_MAX_BY_SERVICE = {"gateway": 2, "notifications": 2, "worker": 2}


# DATABASE_POOLER: what sits between the processes and PostgreSQL.
POOLERS = {"": "", "none": "", "pgbouncer": "pgbouncer"}


# Who may read /ready and /metrics: loopback and the private ranges (Prometheus,
# Kubernetes probes, docker networks). OPS_ALLOWED_NETWORKS replaces the list.
OPS_DEFAULT_NETWORKS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


class ConfigError(SystemExit):
    """Raised at start when configuration is unusable; its message is the one line printed."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"configuration error: {name} must be an integer, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"configuration error: {name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"configuration error: {name} must be a number, got {raw!r}") from None


def _ratio(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"configuration error: {name} must be between 0 and 1, got {value}")
    return value


def _at_least_one(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ConfigError(f"configuration error: {name} must be at least 1, got {value}")
    return value


def _at_least(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    value = _int(env, name, default)
    if value < least:
        raise ConfigError(f"configuration error: {name} must be at least {least}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: Mapping[str, str]) -> str:
    """One of ``choices`` (spellings, case-insensitive -> the value); unset or empty is ``""``."""
    raw = (env.get(name) or "").strip().lower()
    if raw in choices:
        return choices[raw]
    raise ConfigError(f"configuration error: {name} must be one of {', '.join(sorted(k for k in choices if k))} "
                      f"or empty, got {env.get(name)!r}")


def _networks(env: Mapping[str, str], name: str, default: str) -> tuple:
    """Comma-separated networks or addresses ("10.0.0.0/8, 192.0.2.7"); empty means none."""
    raw = env.get(name, default)
    try:
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in raw.split(",") if n.strip())
    except ValueError:
        raise ConfigError(f"configuration error: {name} must be comma-separated networks, got {raw!r}") from None


class Secret(str):
    """A string that never shows itself in repr or logs."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Settings:
    app_env: str = "development"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/oms"
    # Database roles are named <prefix><what> (oms_orders, oms_worker): see infra/roles.py.
    db_role_prefix: str | None = None
    # Passwords `migrate` gives the roles (DB_PASSWORD_<ROLE>), by role: users, ..., gateway, worker.
    db_role_passwords: dict = field(default_factory=dict, repr=False)
    redis_url: str = "redis://127.0.0.1:6379/0"
    jwt_secret_key: Secret = field(default=Secret(_DEV_SECRETS["JWT_SECRET_KEY"]), repr=False)
    access_token_ttl: int = 900
    refresh_token_ttl: int = 1_209_600
    service_urls: dict = field(default_factory=dict)
    # Upstreams the gateway checks in /ready: the services this deployment runs.
    gateway_services: tuple = SERVICES
    ports: dict = field(default_factory=dict)
    db_pool_min: int = 1
    db_pool_max: int = 4
    db_timeout: float = 5.0
    db_statement_timeout_ms: int = 10_000
    db_lock_timeout_ms: int = 3_000
    # What sits between the processes and PostgreSQL (DATABASE_POOLER): "" for nothing, or
    # "pgbouncer" for PgBouncer in transaction pooling mode. Behind it no named prepared
    # statement outlives a transaction, only application_name travels at connection
    # start (the search_path pin and the timeouts are the roles' defaults, which
    # `migrate` sets), and migrations need MIGRATIONS_DATABASE_URL (infra/db.py, infra/migrations.py).
    database_pooler: str = ""
    # asyncpg's cache of named prepared statements, per connection (DATABASE_STATEMENT_CACHE_SIZE):
    # 1000 by default, 0 with DATABASE_POOLER=pgbouncer (before 1.21 PgBouncer does not
    # track prepared statements; with its max_prepared_statements set, a cache may be given).
    db_statement_cache_size: int = 1000
    # Where `migrate` connects (MIGRATIONS_DATABASE_URL): PostgreSQL itself, not a pooler,
    # for a whole run holds one session. Default: DATABASE_URL.
    migrations_database_url: str | None = None
    upstream_connect_timeout: float = 1.0
    upstream_read_timeout: float = 10.0
    reservation_ttl_seconds: int = 900
    fulfilment_delay_seconds: float = 0.0
    outbox_sweep_seconds: float = 5.0
    inventory_timeout: float = 2.0
    inventory_breaker_fail_max: int = 5
    inventory_breaker_reset: float = 10.0
    # Transient failures retry for as long as the outage lasts, the wait between
    # attempts doubling up to this cap; sweeps re-announce what a lost message stranded.
    task_retry_backoff_max: float = 60.0
    reconcile_seconds: float = 10.0
    order_reannounce_after_seconds: float = 30.0
    order_reannounce_max_seconds: float = 300.0
    notification_redeliver_after_seconds: float = 60.0
    broker_loss_replay_seconds: float = 3600.0
    auth_revocation_fail_open: bool = True
    # A login session ends this long after the login, however often it is refreshed;
    # refresh_token_ttl is how long it may sit unused.
    session_max_age_seconds: int = 2_592_000
    login_failures_before_delay: int = 5
    login_delay_seconds: int = 2
    login_delay_max_seconds: int = 900
    login_failure_window_seconds: int = 3600
    # Across clients (a spraying run): from this many failures on, every further one locks the
    # account for the delay (never longer) for clients it has not logged in from.
    login_account_failures_max: int = 20
    login_account_delay_seconds: int = 60
    gateway_breaker_fail_max: int = 5
    gateway_breaker_reset_seconds: float = 10.0
    # A bulkhead per upstream service and gateway worker: at most this many of its requests
    # wait on one service at once (leaving threads for the others); a request that finds no
    # room within the wait is answered 503 with Retry-After, and the breaker counts nothing.
    gateway_upstream_concurrency: int = 6
    gateway_upstream_wait_seconds: float = 1.0
    # The gateway's listener for the web console's API calls (GATEWAY_CONSOLE_PORT; None: none).
    gateway_console_port: int | None = GATEWAY_CONSOLE_PORT
    registry_enabled: bool = True
    registry_heartbeat_seconds: float = 2.0
    registry_ttl_seconds: float = 6.0
    advertise_url: str | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: Secret | None = field(default=None, repr=False)
    mail_from: str = "OMS <no-reply@oms.local>"
    sms_webhook_url: str | None = None
    sms_webhook_token: Secret | None = field(default=None, repr=False)
    rate_limit_default: str = "600/minute"
    # The web console's pages (everything outside /api but its static files), per client.
    rate_limit_pages: str = "600/minute"
    rate_limit_login: str = "10/minute"
    log_level: str = "INFO"
    log_format: str = "console"
    admin_email: str | None = None
    admin_password: Secret | None = field(default=None, repr=False)
    ops_allowed_networks: tuple = _networks({}, "", OPS_DEFAULT_NETWORKS)
    # Proxies whose X-Forwarded-For is believed, for every rule that keys on the client
    # (app/forwarded.py): TRUSTED_PROXIES (OPS_TRUSTED_PROXIES, its earlier name).
    trusted_proxies: tuple = ()
    ready_cache_seconds: float = 1.0
    # What this process is called in logs, traces and application_name (SERVICE_NAME).
    service_name: str | None = None
    # Celery (config/celery.py): the broker (default: REDIS_URL), and how long a message a
    # worker took stays invisible before Redis hands it to another (the bound on how long a
    # SIGKILLed worker's messages wait).
    celery_broker_url: str | None = None
    celery_visibility_timeout: int = 300
    celery_prefetch_multiplier: int = 1
    celery_task_soft_time_limit: int = 60
    celery_task_time_limit: int = 90
    # The file a worker touches while its consumer runs (workers/liveness.py).
    worker_liveness_file: str | None = None
    worker_liveness_interval: float = 5.0
    # Share of traces recorded where no parent decided (parent-based): every one in
    # development, a sample elsewhere.
    trace_sample_ratio: float = 1.0
    # Admission control: placement answers 503 with Retry-After while the pipeline's
    # backlog would keep a new order from being fulfilled within this many seconds.
    order_latency_budget_seconds: float = 2.0
    # Events for one consumer that are ready together travel as one message of at most this many.
    event_batch_max: int = 100
    # The web console (app/web): where it calls the public API (GATEWAY_URL: the gateway's
    # listener for the console, GATEWAY_CONSOLE_PORT), and the key that signs its session
    # cookie (the CSRF token's secret and who is signed in; WEB_SECRET_KEY).
    gateway_url: str = f"http://127.0.0.1:{GATEWAY_CONSOLE_PORT}"
    web_secret_key: Secret = field(default=Secret(_DEV_SECRETS["WEB_SECRET_KEY"]), repr=False)
    # Dashboards the operations console links to (FLOWER_URL, GRAFANA_URL, JAEGER_URL): no link when empty.
    flower_url: str = ""
    grafana_url: str = ""
    jaeger_url: str = ""

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @property
    def secure_cookies(self) -> bool:
        """Browser cookies only over HTTPS: everywhere but development."""
        return self.app_env != "development"

    @property
    def migrations_url(self) -> str:
        """The URL ``migrate`` connects to: MIGRATIONS_DATABASE_URL, else DATABASE_URL."""
        return self.migrations_database_url or self.database_url

    @property
    def role_prefix(self) -> str:
        """DB_ROLE_PREFIX, or the database's name and ``_``: databases on one server never share roles."""
        if self.db_role_prefix:
            return self.db_role_prefix
        from config.dburl import database_name

        # Without a database in the URL, libpq connects to the one named like the user.
        return database_name(self.database_url) + "_"

    def redacted(self) -> dict:
        """Settings safe to log: secrets and URL passwords masked."""
        from urllib.parse import urlsplit

        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = "***"
            elif isinstance(value, dict) and any(isinstance(v, Secret) for v in value.values()):
                value = {k: "***" for k in value}
            elif isinstance(value, str) and "://" in value:
                parts = urlsplit(value)
                if parts.password:
                    value = value.replace(f":{parts.password}@", ":***@")
            out[f.name] = value
        return out


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    app_env = env.get("APP_ENV", "development")
    web = env.get("SERVICE_NAME") == WEB
    if app_env == "production":
        for name in _REQUIRED_IN_PRODUCTION_BY_SERVICE.get(env.get("SERVICE_NAME", ""), _REQUIRED_IN_PRODUCTION):
            if not env.get(name):
                raise ConfigError(f"configuration error: {name} must be set when APP_ENV=production")
    if web and not env.get("JWT_SECRET_KEY"):
        # The web console verifies no token (the gateway does): a key nobody else has.
        jwt_secret = secrets.token_urlsafe(48)
    else:
        jwt_secret = _secret(env, "JWT_SECRET_KEY", app_env)
    # Checked where it signs something (the web console); other processes never use it.
    web_secret = _secret(env, "WEB_SECRET_KEY", app_env) if web else (
        env.get("WEB_SECRET_KEY") or _DEV_SECRETS["WEB_SECRET_KEY"])
    ports = {name: _int(env, f"{name.upper()}_PORT", port) for name, port in DEFAULT_PORTS.items()}
    service_urls = {
        name: env.get(f"{name.upper()}_URL") or f"http://127.0.0.1:{ports[name]}"
        for name in (*SERVICES, WEB)
    }
    admin_password = env.get("ADMIN_PASSWORD")
    pooler = _choice(env, "DATABASE_POOLER", POOLERS)
    return Settings(
        app_env=app_env,
        database_url=env.get("DATABASE_URL") or Settings.database_url,
        db_role_prefix=env.get("DB_ROLE_PREFIX") or None,
        db_role_passwords={
            role: Secret(env[f"DB_PASSWORD_{role.upper()}"])
            for role in (*SCHEMAS, "gateway", "worker") if env.get(f"DB_PASSWORD_{role.upper()}")
        },
        redis_url=env.get("REDIS_URL") or Settings.redis_url,
        jwt_secret_key=Secret(jwt_secret),
        access_token_ttl=_int(env, "ACCESS_TOKEN_TTL_SECONDS", 900),
        refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL_SECONDS", 1_209_600),
        service_urls=service_urls,
        gateway_services=tuple(
            s.strip() for s in env.get("GATEWAY_SERVICES", ",".join(SERVICES)).split(",") if s.strip()
        ),
        ports=ports,
        db_pool_min=_int(env, "DB_POOL_MIN", 1),
        db_pool_max=_int(env, "DB_POOL_MAX", POOL_MAX_BY_SERVICE.get(env.get("SERVICE_NAME", ""), 4)),
        db_timeout=_float(env, "DB_TIMEOUT_SECONDS", 5.0),
        db_statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 10_000),
        db_lock_timeout_ms=_int(env, "DB_LOCK_TIMEOUT_MS", 3_000),
        database_pooler=pooler,
        db_statement_cache_size=_at_least(env, "DATABASE_STATEMENT_CACHE_SIZE", 0 if pooler else 1000, 0),
        migrations_database_url=env.get("MIGRATIONS_DATABASE_URL") or None,
        upstream_connect_timeout=_float(env, "UPSTREAM_CONNECT_TIMEOUT_SECONDS", 1.0),
        upstream_read_timeout=_float(env, "UPSTREAM_READ_TIMEOUT_SECONDS", 10.0),
        reservation_ttl_seconds=_int(env, "RESERVATION_TTL_SECONDS", 900),
        fulfilment_delay_seconds=_float(env, "FULFILMENT_DELAY_SECONDS", 0.0),
        outbox_sweep_seconds=_float(env, "OUTBOX_SWEEP_SECONDS", 5.0),
        inventory_timeout=_float(env, "INVENTORY_TIMEOUT_SECONDS", 2.0),
        inventory_breaker_fail_max=_int(env, "INVENTORY_BREAKER_FAIL_MAX", 5),
        inventory_breaker_reset=_float(env, "INVENTORY_BREAKER_RESET_SECONDS", 10.0),
        task_retry_backoff_max=_float(env, "TASK_RETRY_BACKOFF_MAX_SECONDS", 60.0),
        reconcile_seconds=_float(env, "RECONCILE_SECONDS", 10.0),
        order_reannounce_after_seconds=_float(env, "ORDER_REANNOUNCE_AFTER_SECONDS", 30.0),
        order_reannounce_max_seconds=_float(env, "ORDER_REANNOUNCE_MAX_SECONDS", 300.0),
        notification_redeliver_after_seconds=_float(env, "NOTIFICATION_REDELIVER_AFTER_SECONDS", 60.0),
        broker_loss_replay_seconds=_float(env, "BROKER_LOSS_REPLAY_SECONDS", 3600.0),
        auth_revocation_fail_open=_bool(env, "AUTH_REVOCATION_FAIL_OPEN", app_env == "development"),
        session_max_age_seconds=_at_least_one(env, "SESSION_MAX_AGE_SECONDS", 2_592_000),
        login_failures_before_delay=_at_least_one(env, "LOGIN_FAILURES_BEFORE_DELAY", 5),
        login_delay_seconds=_at_least_one(env, "LOGIN_DELAY_SECONDS", 2),
        login_delay_max_seconds=_at_least_one(env, "LOGIN_DELAY_MAX_SECONDS", 900),
        login_failure_window_seconds=_at_least_one(env, "LOGIN_FAILURE_WINDOW_SECONDS", 3600),
        login_account_failures_max=_at_least_one(env, "LOGIN_ACCOUNT_FAILURES_MAX", 20),
        login_account_delay_seconds=_at_least_one(env, "LOGIN_ACCOUNT_DELAY_SECONDS", 60),
        gateway_breaker_fail_max=_int(env, "GATEWAY_BREAKER_FAIL_MAX", 5),
        gateway_upstream_concurrency=_at_least_one(env, "GATEWAY_UPSTREAM_CONCURRENCY", 6),
        gateway_upstream_wait_seconds=_float(env, "GATEWAY_UPSTREAM_WAIT_SECONDS", 1.0),
        gateway_console_port=_int(env, "GATEWAY_CONSOLE_PORT", GATEWAY_CONSOLE_PORT) if env.get(
            "GATEWAY_CONSOLE_PORT", "x") != "" else None,
        gateway_breaker_reset_seconds=_float(env, "GATEWAY_BREAKER_RESET_SECONDS", 10.0),
        registry_enabled=_bool(env, "REGISTRY_ENABLED", True),
        registry_heartbeat_seconds=_float(env, "REGISTRY_HEARTBEAT_SECONDS", 2.0),
        registry_ttl_seconds=_float(env, "REGISTRY_TTL_SECONDS", 6.0),
        advertise_url=env.get("ADVERTISE_URL") or None,
        smtp_host=env.get("SMTP_HOST", "127.0.0.1"),
        smtp_port=_int(env, "SMTP_PORT", 1025),
        smtp_starttls=_bool(env, "SMTP_STARTTLS", False),
        smtp_username=env.get("SMTP_USERNAME") or None,
        smtp_password=Secret(env["SMTP_PASSWORD"]) if env.get("SMTP_PASSWORD") else None,
        mail_from=env.get("MAIL_FROM", "OMS <no-reply@oms.local>"),
        sms_webhook_url=env.get("SMS_WEBHOOK_URL") or None,
        sms_webhook_token=Secret(env["SMS_WEBHOOK_TOKEN"]) if env.get("SMS_WEBHOOK_TOKEN") else None,
        rate_limit_default=env.get("RATE_LIMIT_DEFAULT", "600/minute"),
        rate_limit_pages=env.get("RATE_LIMIT_PAGES", "600/minute"),
        rate_limit_login=env.get("RATE_LIMIT_LOGIN", "10/minute"),
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        log_format=env.get("LOG_FORMAT", "json" if app_env == "production" else "console"),
        admin_email=env.get("ADMIN_EMAIL") or None,
        admin_password=Secret(admin_password) if admin_password else None,
        ops_allowed_networks=_networks(env, "OPS_ALLOWED_NETWORKS", OPS_DEFAULT_NETWORKS),
        trusted_proxies=_networks(env, "TRUSTED_PROXIES", "") if env.get("TRUSTED_PROXIES") is not None
        else _networks(env, "OPS_TRUSTED_PROXIES", ""),
        ready_cache_seconds=_float(env, "READY_CACHE_SECONDS", 1.0),
        service_name=env.get("SERVICE_NAME") or None,
        celery_broker_url=env.get("CELERY_BROKER_URL") or None,
        celery_visibility_timeout=_at_least_one(env, "CELERY_VISIBILITY_TIMEOUT", 300),
        celery_prefetch_multiplier=_at_least_one(env, "CELERY_PREFETCH_MULTIPLIER", 1),
        celery_task_soft_time_limit=_at_least_one(env, "CELERY_TASK_SOFT_TIME_LIMIT", 60),
        celery_task_time_limit=_at_least_one(env, "CELERY_TASK_TIME_LIMIT", 90),
        worker_liveness_file=env.get("WORKER_LIVENESS_FILE") or None,
        worker_liveness_interval=_float(env, "WORKER_LIVENESS_INTERVAL", 5.0),
        trace_sample_ratio=_ratio(env, "TRACE_SAMPLE_RATIO", 1.0 if app_env == "development" else 0.1),
        order_latency_budget_seconds=_float(env, "ORDER_LATENCY_BUDGET_SECONDS", 2.0),
        event_batch_max=_at_least_one(env, "EVENT_BATCH_MAX", 100),
        gateway_url=(env.get("GATEWAY_URL") or
                     f"http://127.0.0.1:{_int(env, 'GATEWAY_CONSOLE_PORT', GATEWAY_CONSOLE_PORT)}").rstrip("/"),
        web_secret_key=Secret(web_secret),
        flower_url=(env.get("FLOWER_URL") or "").strip(),
        grafana_url=(env.get("GRAFANA_URL") or "").strip(),
        jaeger_url=(env.get("JAEGER_URL") or "").strip(),
    )


def _secret(env: Mapping[str, str], name: str, app_env: str) -> str:
    """A signing key: the development one only in development, else at least 32 bytes."""
    value = env.get(name) or _DEV_SECRETS[name]
    if app_env != "development" and (value == _DEV_SECRETS[name] or len(value.encode()) < MIN_JWT_SECRET_BYTES):
        raise ConfigError(
            f"configuration error: {name} must be set to a secret of at least {MIN_JWT_SECRET_BYTES} "
            f"bytes, not the development one, when APP_ENV={app_env}"
        )
    return value


def settings_or_exit(env: Mapping[str, str] | None = None) -> Settings:
    """Load settings; on a configuration error print its one line to stderr and exit 2."""
    try:
        return load_settings(env)
    except ConfigError as exc:
        sys.stderr.write(f"{exc.code}\n")
        raise SystemExit(2) from None
