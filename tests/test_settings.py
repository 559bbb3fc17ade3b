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
