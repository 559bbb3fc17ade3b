"""A worker holding unacknowledged messages survives its Redis broker going away.

workers/broker.py changes one private method of kombu's Redis channel; the guard test
fails when the pinned kombu changes what that relies on.
"""
from __future__ import annotations

import inspect
import json
import time
import uuid
from types import SimpleNamespace

import pytest


def test_guard_kombu_builds_redis_parameters_from_the_connection_client():
    from kombu.transport import redis as kombu_redis

    source = inspect.getsource(kombu_redis.Channel._connparams)
    assert "conninfo = self.connection.client" in source
    assert "def _connparams(self, asynchronous=False)" in source


def test_a_closed_connection_is_a_connection_error_not_an_attribute_error():
    import workers.celery_app  # noqa: F401  (installs the channel)
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.broker import Channel

    assert kombu_redis.Transport.Channel is Channel
    channel = Channel.__new__(Channel)
    channel.connection = SimpleNamespace(client=None)
    with pytest.raises(RedisConnectionError) as raised:
        channel._connparams()
    assert isinstance(raised.value, tuple(kombu_redis.Transport.connection_errors))


def test_a_worker_holding_messages_survives_its_broker_restarting(rt, stack_env, tmp_path):
    import redis
    from celery import Celery

    from devtools import embedded
    from config.celery import broker_url, celery_config
    from config.settings import load_settings
    from tests.conftest import Worker
    from tests.support import wait_for

    server = embedded.start_redis(tmp_path / "broker", persistent=False)
    env = {**stack_env, "CELERY_BROKER_URL": broker_url(server.url)}
    worker = Worker(env, concurrency=1)
    try:
        sender = Celery("test-sender")
        sender.conf.update(celery_config(load_settings(env)))
        sender.conf.broker_url = env["CELERY_BROKER_URL"]
        # A message the worker takes and holds unacknowledged while it waits out the countdown.
        sender.send_task("outbox.sweep", queue="outbox", countdown=3600)
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: client.hlen("unacked") >= 1, what="the worker to hold the message")
        client.close()
        server.stop()  # the broker goes away under the worker's feet
        time.sleep(3)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        server = embedded.start_redis(tmp_path / "broker", persistent=False)
        marker = uuid.uuid4().hex
        sender.send_task("inventory.reserve", queue="inventory",
                         args=[{"id": "not-a-uuid", "type": "order.placed", "payload": {"marker": marker}}])

        def dead_letter():
            async def read(db):
                return await db.fetch_value(
                    "SELECT count(*) FROM {{tables.dead_letters}} WHERE args::text LIKE $1", f"%{marker}%")
            return rt.db.run(read, rt.db.manager("public"))

        wait_for(dead_letter, timeout=60, interval=0.5, what="the worker to take new work after the broker came back")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
        server.stop()
