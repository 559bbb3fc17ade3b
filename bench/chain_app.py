"""Baseline (c): a bare Celery chain with as many hops as one order causes, trivial task bodies.

Same broker and settings as the real workers (``config.celery.celery_config``); the queues
are the pipeline's with a ``bench-`` prefix, so the two never mix. The last hop counts the
finished chain in Redis; the batched chain's tasks take a list of events. ``celery -A
bench.chain_app:app worker`` (see baselines.chain).
"""
from __future__ import annotations

import os

import redis
from celery import Celery

from bench.baselines import DONE_KEY, QUEUE_PREFIX
from config.celery import celery_config
from config.settings import load_settings


def make_app(env) -> Celery:
    celery = Celery("bench-chain")
    celery.conf.update(celery_config(load_settings(env)))
    celery.conf.task_default_queue = QUEUE_PREFIX + "default"
    return celery


app = make_app(os.environ)
_redis: list = []


def _count(n: int) -> None:
    if not _redis:
        _redis.append(redis.Redis.from_url(load_settings().redis_url))
    _redis[0].incrby(DONE_KEY, n)


@app.task(name="bench.hop", acks_late=True, reject_on_worker_lost=True)
def hop(event: dict) -> dict:
    return event


@app.task(name="bench.last_hop", acks_late=True, reject_on_worker_lost=True)
def last_hop(event: dict) -> None:
    _count(1)


# The batched chain: one message carries a list of events, each handled in turn, forwarded as one list.
@app.task(name="bench.batch_hop", acks_late=True, reject_on_worker_lost=True)
def batch_hop(events: list[dict]) -> list[dict]:
    return [hop.run(event) for event in events]


@app.task(name="bench.batch_last_hop", acks_late=True, reject_on_worker_lost=True)
def batch_last_hop(events: list[dict]) -> None:
    _count(len(events))
