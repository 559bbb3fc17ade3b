"""Configuration of sessions, login throttling and the operations endpoints (unit: no I/O)."""
import ipaddress

import pytest

from config.settings import ConfigError, load_settings

DEV_SECRET = load_settings({}).jwt_secret_key
GOOD_SECRET = "k" * 32


@pytest.mark.parametrize("app_env", ["test", "staging", "production"])
def test_every_environment_but_development_refuses_the_development_secret(app_env):
    env = {"APP_ENV": app_env, "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
    with pytest.raises(ConfigError) as missing:
        load_settings(env)
    with pytest.raises(ConfigError) as dev:
        load_settings({**env, "JWT_SECRET_KEY": str(DEV_SECRET)})
    for error in (missing.value, dev.value):
        line = str(error.code)
        assert "JWT_SECRET_KEY" in line and "\n" not in line and str(DEV_SECRET) not in line


@pytest.mark.parametrize("app_env", ["test", "staging", "production"])
def test_a_secret_shorter_than_32_bytes_is_refused_outside_development(app_env):
    env = {"APP_ENV": app_env, "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY.*32 bytes") as short:
        load_settings({**env, "JWT_SECRET_KEY": "k" * 31})
    assert "k" * 31 not in str(short.value.code)
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    assert load_settings({**env, "JWT_SECRET_KEY": "é" * 16}).jwt_secret_key == "é" * 16
    assert load_settings({**env, "JWT_SECRET_KEY": GOOD_SECRET}).app_env == app_env


def test_development_keeps_its_default_secret():
    assert load_settings({"APP_ENV": "development"}).jwt_secret_key == DEV_SECRET


def test_production_still_names_a_missing_secret_first():
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY must be set when APP_ENV=production"):
        load_settings({"APP_ENV": "production", "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"})


def test_revocation_fails_open_by_default_only_in_development():
    assert load_settings({}).auth_revocation_fail_open is True
    assert load_settings({"APP_ENV": "test", "JWT_SECRET_KEY": GOOD_SECRET}).auth_revocation_fail_open is False
    assert load_settings({"APP_ENV": "staging", "JWT_SECRET_KEY": GOOD_SECRET,
                          "AUTH_REVOCATION_FAIL_OPEN": "true"}).auth_revocation_fail_open is True
    assert load_settings({"AUTH_REVOCATION_FAIL_OPEN": "false"}).auth_revocation_fail_open is False


def test_session_and_login_throttle_defaults():
    s = load_settings({})
    assert s.session_max_age_seconds == 30 * 24 * 3600
    assert (s.login_failures_before_delay, s.login_delay_seconds, s.login_delay_max_seconds,
            s.login_failure_window_seconds) == (5, 2, 900, 3600)
    custom = load_settings({"SESSION_MAX_AGE_SECONDS": "60", "LOGIN_FAILURES_BEFORE_DELAY": "3",
                            "LOGIN_DELAY_SECONDS": "1", "LOGIN_DELAY_MAX_SECONDS": "8",
                            "LOGIN_FAILURE_WINDOW_SECONDS": "120"})
    assert (custom.session_max_age_seconds, custom.login_failures_before_delay, custom.login_delay_seconds,
            custom.login_delay_max_seconds, custom.login_failure_window_seconds) == (60, 3, 1, 8, 120)


@pytest.mark.parametrize("name", ["SESSION_MAX_AGE_SECONDS", "LOGIN_FAILURES_BEFORE_DELAY", "LOGIN_DELAY_SECONDS"])
def test_a_session_or_throttle_setting_below_one_names_the_variable(name):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: "0"})


def test_operations_networks_default_to_loopback_and_private_ranges():
    s = load_settings({})
    allowed = set(s.ops_allowed_networks)
    assert allowed == {ipaddress.ip_network(n) for n in (
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")}
    assert s.trusted_proxies == () and s.ready_cache_seconds == 1.0


def test_operations_networks_are_configurable_and_checked():
    s = load_settings({"OPS_ALLOWED_NETWORKS": " 10.1.0.0/16, 2001:db8::/32 ,192.0.2.7",
                       "OPS_TRUSTED_PROXIES": "10.0.0.5"})
    assert s.ops_allowed_networks == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::/32"),
                                      ipaddress.ip_network("192.0.2.7/32"))
    assert s.trusted_proxies == (ipaddress.ip_network("10.0.0.5/32"),)
    assert load_settings({"OPS_ALLOWED_NETWORKS": ""}).ops_allowed_networks == ()
    with pytest.raises(ConfigError, match="OPS_ALLOWED_NETWORKS"):
        load_settings({"OPS_ALLOWED_NETWORKS": "10.0.0.0/8,the office"})
    with pytest.raises(ConfigError, match="OPS_TRUSTED_PROXIES"):
        load_settings({"OPS_TRUSTED_PROXIES": "300.1.1.1"})
    # TRUSTED_PROXIES is the name now (every rule that keys on the client believes them).
    assert load_settings({"TRUSTED_PROXIES": "10.0.0.6", "OPS_TRUSTED_PROXIES": "10.0.0.5"}).trusted_proxies == \
        (ipaddress.ip_network("10.0.0.6/32"),)
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        load_settings({"TRUSTED_PROXIES": "a proxy"})
