"""Prometheus metrics of an HTTP process (multiprocess mode under gunicorn).

Request counts and latency are recorded per process and summed at scrape time;
pool gauges are per process (labelled by pid); the domain's figures (its wiring.py),
its outbox lag and, on the gateway, dead letters are read from the database when scraped.
"""
from __future__ import annotations

import logging
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from infra import dead_letters, messaging, runtime
from infra.errors import Unavailable
from infra.wiring import Figure
from services import wiring

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
POOL = Gauge("db_pool_connections", "Connections of this process's pool", ["service", "state"],
             multiprocess_mode="livesum")
BRIDGE_INFLIGHT = Gauge("db_bridge_inflight_calls", "Database calls in progress (beyond pool max = waiting)",
                        ["service"], multiprocess_mode="livesum")


def observe_pool(service: str) -> None:
    rt = runtime.current()
    if rt is None or rt.db.pool is None:
        return
    pool = rt.db.pool
    size, idle = pool.get_size(), pool.get_idle_size()
    POOL.labels(service, "open").set(size)
    POOL.labels(service, "in_use").set(size - idle)
    POOL.labels(service, "max").set(pool.get_max_size())
    BRIDGE_INFLIGHT.labels(service).set(rt.db.inflight)


# -- figures read from the database at scrape time ---------------------------------------
def _figures(service: str) -> list[tuple[str, object]]:
    """(schema, reader) pairs: the domain's own figures, its outbox, and dead letters (gateway)."""
    if service == "gateway":
        return [("public", _dead_letters)]
    found = []
    for domain in wiring():
        if domain.name == service:
            found += [(domain.name, _outbox)] if domain.outbox else []
            found += [(domain.name, figure) for figure in domain.figures]
    return found


async def _outbox(db) -> list:
    row = await messaging.backlog(db)
    lag = GaugeMetricFamily("outbox_lag_seconds", "Age of the oldest unpublished event", labels=["schema"])
    pending = GaugeMetricFamily("outbox_unpublished_events", "Unpublished events", labels=["schema"])
    lag.add_metric([db.schema], row["age"])
    pending.add_metric([db.schema], row["pending"])
    return [lag, pending]


async def _dead_letters(db) -> list:
    row = await dead_letters.counts(db)
    family = GaugeMetricFamily("dead_letters", "Dead letters", labels=["state"])
    family.add_metric(["open"], row["open"])
    family.add_metric(["all"], row["total"])
    return [family]


async def _read(db, reader) -> list:
    if not isinstance(reader, Figure):
        return await reader(db)
    family = GaugeMetricFamily(reader.name, reader.help, labels=list(reader.labels))
    for row in await reader.read(db):
        family.add_metric([row[label] for label in reader.labels], row["n"])
    return [family]


class DomainCollector:
    def __init__(self, service: str):
        self.service = service

    def collect(self):
        for schema, reader in _figures(self.service):
            name = getattr(reader, "name", None) or reader.__name__.lstrip("_")
            try:
                db = runtime.db()
                yield from db.run(_read, db.manager(schema), reader, timeout=1.0)
            except Unavailable:
                logger.warning("metrics: database unavailable for %s", name)
            except Exception:  # a scrape must not fail because one figure could not be read
                logger.error("metrics: could not read %s", name, exc_info=True)


def render(service: str) -> tuple[bytes, str]:
    observe_pool(service)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    registry.register(DomainCollector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST
