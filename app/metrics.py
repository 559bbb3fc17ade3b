"""Prometheus metrics of an HTTP process (multiprocess mode under gunicorn).

Request counts and latency are recorded per process and summed at scrape time;
pool gauges are per process (labelled by pid); domain figures (outbox lag, orders
by status, notifications, dead letters) are read from the database when scraped.
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

from infra import runtime
from infra.errors import Unavailable

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


# -- domain figures, read at scrape time ------------------------------------------------
_QUERIES = {
    "users": [("outbox",)],
    "orders": [("outbox",), ("orders",)],
    "inventory": [("outbox",), ("reservations",)],
    "notifications": [("notifications",)],
    "gateway": [("dead_letters",)],
}


async def _domain_figures(db, kind: str) -> list:
    if kind == "outbox":
        return [await db.fetch_one(
            "SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age "
            "FROM {{tables.outbox}} WHERE published_at IS NULL")]
    if kind == "orders":
        return await db.fetch_all(
            "SELECT status, coalesce(reason, '') AS reason, count(*) AS n FROM {{tables.orders}} GROUP BY 1, 2")
    if kind == "reservations":
        return await db.fetch_all("SELECT status, count(*) AS n FROM {{tables.reservations}} GROUP BY 1")
    if kind == "notifications":
        return await db.fetch_all(
            "SELECT channel, status, count(*) AS n FROM {{tables.notifications}} GROUP BY 1, 2")
    return [await db.fetch_one(
        "SELECT count(*) FILTER (WHERE redriven_at IS NULL) AS open, count(*) AS total FROM {{tables.dead_letters}}")]


class DomainCollector:
    def __init__(self, service: str):
        self.service = service

    def collect(self):
        schema = "public" if self.service == "gateway" else self.service
        for (kind,) in _QUERIES.get(self.service, []):
            try:
                db = runtime.db()
                rows = db.run(_domain_figures, db.manager(schema), kind, timeout=1.0)
            except Unavailable:
                logger.warning("metrics: database unavailable for %s", kind)
                continue
            except Exception:  # a scrape must not fail because one figure could not be read
                logger.error("metrics: could not read %s", kind, exc_info=True)
                continue
            yield from self._families(kind, schema, rows)

    def _families(self, kind, schema, rows):
        if kind == "outbox":
            lag = GaugeMetricFamily("outbox_lag_seconds", "Age of the oldest unpublished event", labels=["schema"])
            lag.add_metric([schema], rows[0]["age"])
            pending = GaugeMetricFamily("outbox_unpublished_events", "Unpublished events", labels=["schema"])
            pending.add_metric([schema], rows[0]["pending"])
            yield from (lag, pending)
        elif kind == "orders":
            family = GaugeMetricFamily("orders", "Orders by status and reason (reason expired: reservations "
                                       "that expired)", labels=["status", "reason"])
            for row in rows:
                family.add_metric([row["status"], row["reason"]], row["n"])
            yield family
        elif kind == "reservations":
            family = GaugeMetricFamily("reservations", "Reservations by status", labels=["status"])
            for row in rows:
                family.add_metric([row["status"]], row["n"])
            yield family
        elif kind == "notifications":
            family = GaugeMetricFamily("notifications", "Notifications by channel and status",
                                       labels=["channel", "status"])
            for row in rows:
                family.add_metric([row["channel"], row["status"]], row["n"])
            yield family
        else:
            family = GaugeMetricFamily("dead_letters", "Dead letters", labels=["state"])
            family.add_metric(["open"], rows[0]["open"])
            family.add_metric(["all"], rows[0]["total"])
            yield family


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
