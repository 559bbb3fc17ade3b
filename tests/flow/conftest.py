"""Fixtures the flow tests share: the gateway, an admin token, a fresh customer."""
import pytest

from tests.support import Api, admin_token, register


@pytest.fixture(scope="module")
def gateway(live_gateway):
    return Api(live_gateway.url)


@pytest.fixture(scope="module")
def admin(gateway):
    return admin_token(gateway)


@pytest.fixture
def customer(gateway):
    return register(gateway)["access_token"]
