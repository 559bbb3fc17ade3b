"""One order is one trace: gateway -> orders -> outbox -> Celery tasks -> notification.

Everything runs in this process (WSGI servers on threads, an in-process Celery worker
on a Redis of its own as broker) so an in-memory exporter sees every span.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.serving import make_server

from tests.conftest import celery_broker, free_port
from tests.support import Api, create_product, place, register, wait_for, wait_terminal


class Server:
    def __init__(self, app):
        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def traced_stack(rt, settings, own_broker, mail_sink):
    from celery.contrib.testing.worker import start_worker

    from app import create_app
    from config import tracing
    from infra import runtime
    from services.notifications import service as notifications
    from workers.celery_app import app as celery
    from workers.relay import publish

    exporter = InMemorySpanExporter()
    tracing.configure("tests", exporter=exporter)
    tracing.instrument_celery()  # trace context into the tasks this process publishes
    previous_publisher = runtime._publisher
    # The notifications go to the session's mail sink (the transports are built from the settings).
    base = replace(settings, registry_enabled=False, smtp_host="127.0.0.1", smtp_port=mail_sink.port,
                   sms_webhook_url=None)
    servers = {name: Server(create_app(name, base)) for name in ("users", "inventory")}
    urls = {**base.service_urls, **{n: s.url for n, s in servers.items()}}
    servers["orders"] = Server(create_app("orders", replace(base, service_urls=urls)))
    urls["orders"] = servers["orders"].url
    gateway = Server(create_app("gateway", replace(base, service_urls=urls)))
    previous_settings, rt.settings = rt.settings, replace(base, service_urls=urls)  # services read these
    try:
        with celery_broker(celery, own_broker), \
                start_worker(celery, pool="threads", concurrency=2, perform_ping_check=False,
                             shutdown_timeout=10, loglevel="WARNING",
                             queues="default,inventory,orders,notifications,outbox"):
            # Committed events go to Celery at once, as in a process runtime.boot set up (set
            # once the worker started: its start sets the process up as a Celery main process).
            runtime.set_publisher(publish)
            yield Api(gateway.url), exporter
    finally:
        gateway.stop()
        for server in servers.values():
            server.stop()
        rt.settings = previous_settings
        runtime.set_publisher(previous_publisher)
        notifications.close_transports()


def test_an_order_is_one_trace_from_the_gateway_to_its_notifications(traced_stack, mail_sink):
    from tests.support import admin_token

    api, exporter = traced_stack
    admin = admin_token(api)
    product = create_product(api, admin, stock=3)
    customer = register(api)
    wait_for(lambda: mail_sink.to(customer["email"]), what="the welcome mail")
    # The welcome task's span ends a moment after its mail arrives: let it, then start clean.
    wait_for(lambda: any(s.name == "run/notifications.notify" for s in exporter.get_finished_spans()),
             what="the welcome task to finish")
    time.sleep(0.5)
    exporter.clear()
    order = place(api, customer["access_token"], [(product["id"], 1)])
    assert wait_terminal(api, customer["access_token"], order["id"])["status"] == "fulfilled"
    wait_for(lambda: len(mail_sink.to(customer["email"])) >= 2, what="the order's mail")  # one: no delay

    def spans():
        return exporter.get_finished_spans()

    wanted = ["run/inventory.reserve", "run/orders.apply_reservation",
              "run/inventory.commit", "run/notifications.notify"]
    wait_for(lambda: {s.name for s in spans()} >= set(wanted), what="the task spans")
    placed = [s for s in spans() if s.kind.name == "SERVER" and s.attributes.get("http.route") == "/api/orders"
              and s.attributes.get("http.request.method", s.attributes.get("http.method")) == "POST"]
    assert placed, sorted({s.name for s in spans()})
    trace_id = placed[0].context.trace_id
    for name in wanted:
        ids = {s.context.trace_id for s in spans() if s.name == name}
        assert ids == {trace_id}, (name, ids)
    sends = [s for s in spans() if s.name == "notifications.send email"]
    assert sends and all(s.context.trace_id == trace_id for s in sends)
    sql = [s for s in spans() if s.context.trace_id == trace_id and s.attributes.get("db.system") == "postgresql"]
    assert sql  # asyncpg queries are part of the trace too
