"""Configuration from the environment (unit: no I/O)."""
import pytest

from config.settings import ConfigError, load_settings


def test_development_defaults_need_no_environment():
    s = load_settings({})
    assert s.ports["gateway"] == 8000 and s.service_urls["users"] == "http://127.0.0.1:8001"
    assert s.rate_limit_default == "600/minute" and s.log_format == "console"


def test_secrets_never_show_in_repr_or_redacted_settings():
    s = load_settings({"JWT_SECRET_KEY": "top-secret-value", "ADMIN_PASSWORD": "pw-value",
                       "DATABASE_URL": "postgresql://app:dbpass@db/oms"})
    assert "top-secret-value" not in repr(s) and "pw-value" not in repr(s)
    text = str(s.redacted())
    assert "top-secret-value" not in text and "dbpass" not in text and "pw-value" not in text


def test_production_requires_every_secret():
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        load_settings({"APP_ENV": "production", "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"})


def test_a_malformed_number_names_the_variable():
    with pytest.raises(ConfigError, match="DB_POOL_MAX"):
        load_settings({"DB_POOL_MAX": "many"})


def test_pool_ceilings_fit_the_connection_budget_unless_set():
    from config.settings import POOL_MAX_BY_SERVICE

    pools = {name: load_settings({"SERVICE_NAME": name}).db_pool_max
             for name in ("gateway", "users", "orders", "inventory", "notifications")}
    celery_children = 2  # CELERY_CONCURRENCY under `make run`
    assert sum(pools.values()) + celery_children * load_settings({"SERVICE_NAME": "worker"}).db_pool_max <= 20
    assert pools["gateway"] == POOL_MAX_BY_SERVICE["gateway"]
    assert load_settings({"SERVICE_NAME": "gateway", "DB_POOL_MAX": "6"}).db_pool_max == 6


def test_each_process_logs_in_as_its_own_role_of_the_database():
    from infra import roles

    s = load_settings({"DATABASE_URL": "postgresql://owner:ownerpass@db:5432/shop?sslmode=require&user=owner"})
    assert s.role_prefix == "shop_"
    orders = roles.login(s, "orders")
    # The owner's password never goes with another user's login.
    assert orders.dsn == "postgresql://shop_orders@db:5432/shop?sslmode=require" and orders.switch == {}
    worker = roles.login(s, roles.WORKER)
    assert worker.dsn.startswith("postgresql://shop_worker@db:5432/shop")
    assert worker.switch == {schema: f"shop_{schema}" for schema in ("users", "orders", "inventory", "notifications")}
    assert roles.login(s, roles.OWNER).dsn == s.database_url


def test_a_url_that_names_the_process_role_is_used_as_given():
    from infra import roles

    url = "postgresql://oms_gateway:secret@db/oms"
    assert roles.login(load_settings({"DATABASE_URL": url}), roles.GATEWAY).dsn == url


def test_the_embedded_servers_socket_url_keeps_its_socket():
    from infra import roles

    s = load_settings({"DATABASE_URL": "postgresql://postgres:@/oms?host=/tmp/pg%20sock"})
    assert roles.login(s, "users").dsn == "postgresql://oms_users@/oms?host=/tmp/pg%20sock"


@pytest.mark.parametrize("url, host, port, database", [
    ("postgresql://postgres:@/oms_test_1?host=/tmp/x/servers0/pgdata", "/tmp/x/servers0/pgdata", 5432, "oms_test_1"),
    ("postgresql://postgres@127.0.0.1:5433/oms", "127.0.0.1", 5433, "oms"),
    ("postgresql://app@db/oms?host=/run/pg&port=6432", "/run/pg", 6432, "oms"),
    ("postgresql://app@db/oms?dbname=other", "db", 5432, "other"),
    ("postgresql://app@db", "db", 5432, "app"),  # libpq: the database named like the user
])
def test_a_database_url_is_read_as_libpq_reads_it_over_tcp_or_a_unix_socket(url, host, port, database):
    from config import dburl

    found = dburl.address(url)
    assert (found.host, found.port, found.database) == (host, port, database)
    assert found.unix_socket == host.startswith("/")
    moved = dburl.address(dburl.with_database(url, "elsewhere"))
    assert (moved.host, moved.port, moved.database) == (host, port, "elsewhere")
    assert load_settings({"DATABASE_URL": url}).role_prefix == database + "_"


def test_the_role_prefix_can_be_set_and_must_leave_room_for_the_names():
    from infra import roles

    assert load_settings({"DB_ROLE_PREFIX": "app_"}).role_prefix == "app_"
    with pytest.raises(ConfigError, match="DB_ROLE_PREFIX"):
        roles.login(load_settings({"DATABASE_URL": f"postgresql://p@h/{'d' * 60}"}), "notifications")
    with pytest.raises(ValueError):
        roles.login(load_settings({}), "billing")


def test_a_role_password_given_to_migrate_goes_with_that_roles_login_only():
    from infra import roles

    s = load_settings({"DATABASE_URL": "postgresql://owner:ownerpass@db/oms", "DB_PASSWORD_ORDERS": "p@ss/word"})
    assert roles.login(s, "orders").dsn == "postgresql://oms_orders:p%40ss%2Fword@db/oms"
    assert roles.login(s, "users").dsn == "postgresql://oms_users@db/oms"
    assert "p@ss/word" not in repr(s) and "p@ss/word" not in str(s.redacted())


def test_traces_are_all_kept_in_development_and_sampled_elsewhere_and_the_ratio_is_checked():
    secret = {"JWT_SECRET_KEY": "s" * 40}
    assert load_settings({}).trace_sample_ratio == 1.0
    assert load_settings({"APP_ENV": "staging", **secret}).trace_sample_ratio == 0.1
    assert load_settings({"APP_ENV": "staging", "TRACE_SAMPLE_RATIO": "0.5", **secret}).trace_sample_ratio == 0.5
    with pytest.raises(ConfigError, match="TRACE_SAMPLE_RATIO"):
        load_settings({"TRACE_SAMPLE_RATIO": "1.5"})


def test_admission_and_batching_settings():
    assert load_settings({}).order_latency_budget_seconds == 2.0
    assert load_settings({"ORDER_LATENCY_BUDGET_SECONDS": "0"}).order_latency_budget_seconds == 0.0
    assert load_settings({}).event_batch_max == 100
    with pytest.raises(ConfigError, match="EVENT_BATCH_MAX"):
        load_settings({"EVENT_BATCH_MAX": "0"})


def test_behind_pgbouncer_no_named_statement_is_cached_and_migrations_go_direct():
    direct = load_settings({})
    assert (direct.database_pooler, direct.db_statement_cache_size) == ("", 1000)
    assert direct.migrations_url == direct.database_url
    pooled = load_settings({"DATABASE_POOLER": "PgBouncer", "DATABASE_URL": "postgresql://oms@pgbouncer:6432/oms",
                            "MIGRATIONS_DATABASE_URL": "postgresql://oms@db:5432/oms"})
    assert (pooled.database_pooler, pooled.db_statement_cache_size) == ("pgbouncer", 0)
    assert pooled.migrations_url == "postgresql://oms@db:5432/oms" and pooled.role_prefix == "oms_"
    # PgBouncer 1.21+ with max_prepared_statements keeps named statements across transactions.
    assert load_settings({"DATABASE_POOLER": "pgbouncer", "DATABASE_STATEMENT_CACHE_SIZE": "100"}
                         ).db_statement_cache_size == 100
    assert load_settings({"DATABASE_POOLER": "none"}).database_pooler == ""
    with pytest.raises(ConfigError, match="DATABASE_POOLER"):
        load_settings({"DATABASE_POOLER": "pgpool"})
    with pytest.raises(ConfigError, match="DATABASE_STATEMENT_CACHE_SIZE"):
        load_settings({"DATABASE_STATEMENT_CACHE_SIZE": "-1"})


# -- who the client is (app/forwarded.py: no I/O) -------------------------------------------
def _nets(*texts):
    import ipaddress

    return tuple(ipaddress.ip_network(t) for t in texts)


@pytest.mark.parametrize("peer, forwarded, trusted, peer_trusted, client", [
    ("203.0.113.9", "198.51.100.1", (), False, "203.0.113.9"),  # nobody trusted: the peer, whatever it says
    ("10.0.0.5", "198.51.100.1", ("10.0.0.0/8",), False, "198.51.100.1"),  # behind our ingress
    ("10.0.0.5", "192.0.2.66, 198.51.100.1", ("10.0.0.0/8",), False, "198.51.100.1"),  # a made-up hop stays unread
    ("10.0.0.5", "198.51.100.1, 10.0.0.7", ("10.0.0.0/8",), False, "198.51.100.1"),  # two of our proxies
    ("127.0.0.1", "127.0.0.2", (), True, "127.0.0.2"),  # the console listener: the web's one hop
    ("127.0.0.1", "192.0.2.66, 127.0.0.2", (), True, "127.0.0.2"),  # ... and no more
    ("10.1.1.1", "198.51.100.1, 10.0.0.5", ("10.0.0.0/8",), True, "198.51.100.1"),  # console behind the ingress
    ("10.0.0.5", "not an address", ("10.0.0.0/8",), False, None),
])
def test_the_client_is_the_nearest_hop_that_is_not_a_trusted_proxy(peer, forwarded, trusted, peer_trusted, client):
    from app.forwarded import client_of

    found = client_of(peer, forwarded, _nets(*trusted), peer_trusted=peer_trusted)
    assert (str(found) if found is not None else None) == client
