"""kombu's Redis channel, made to fail like a lost connection when its connection is gone.

When the broker drops while a worker holds unacknowledged messages (late acks), Celery
closes the channel, and closing it restores those messages, which needs a new Redis
client; kombu builds its parameters from ``self.connection.client``, which the closing
connection has already set to ``None``. The ``AttributeError`` that follows is not a
connection error, so Celery calls it unrecoverable and the worker process exits (seen in
the chaos run: Redis restarted, every worker gone, every order after it pending). Raised
as a connection error instead, it is ignored by the close, and the worker reconnects as it
does after any broker outage; the messages come back after the visibility timeout.

This subclasses a private method of kombu's channel; tests/workers/test_broker.py fails
if the pinned kombu changes what it relies on.
"""
from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


def install() -> None:
    """Make kombu's Redis transport (redis://, rediss://, redis+socket://) use this channel."""
    kombu_redis.Transport.Channel = Channel
