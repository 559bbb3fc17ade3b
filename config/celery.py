"""Celery settings (the worker and beat read them through ``workers.celery_app``)."""
from __future__ import annotations

from config.settings import Settings


QUEUES = ("default", "inventory", "orders", "notifications", "outbox")


def broker_url(redis_url: str) -> str:
    """kombu spells a Redis unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url


def _rabbitmq(config: dict) -> dict:
    """RabbitMQ as broker: quorum queues (replicated, poison-message limits) and
    publisher confirms, as Celery documents them; the Redis-only options go away."""
    from kombu import Queue

    config["task_queues"] = [Queue(q, routing_key=q, queue_arguments={"x-queue-type": "quorum"}) for q in QUEUES]
    config["worker_detect_quorum_queues"] = True
    config["broker_transport_options"] = {"confirm_publish": True, "max_retries": 1, "interval_start": 0,
                                          "interval_step": 0.1, "interval_max": 0.2}
    return config


def celery_config(settings: Settings) -> dict:
    url = settings.celery_broker_url or broker_url(settings.redis_url)
    # The visibility timeout must exceed the longest task (the hard time limit) and the
    # longest countdown (retry backoff cap, fulfilment delay); a message redelivered early
    # is only a duplicate, which the inbox absorbs.
    visibility_timeout = settings.celery_visibility_timeout
    config = {
        "broker_url": url,
        "result_backend": None,  # PostgreSQL is the source of truth, not task results
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # At-least-once delivery: a task is acked after it ran, and redelivered if
        # its worker died; consumers are idempotent (inbox) so that is safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.celery_prefetch_multiplier,
        # Hard limit well below the visibility timeout, so Redis never redelivers a
        # task that is still running.
        "task_soft_time_limit": settings.celery_task_soft_time_limit,
        "task_time_limit": settings.celery_task_time_limit,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # Look for such messages every 10 s rather than every 100 s (kombu's default).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            # A web request publishing after commit must not wait seconds for a broker
            # that is down: fail fast and leave the event to the outbox sweep.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.2,
        },
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": "default",
        # Tasks are named <domain>.<verb>; each domain has its queue.
        "task_routes": {f"{queue}.*": {"queue": queue} for queue in QUEUES if queue != "default"},
    }
    return _rabbitmq(config) if url.startswith(("amqp://", "amqps://", "pyamqp://")) else config
