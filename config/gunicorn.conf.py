"""Gunicorn settings shared by the gateway and the services.

``gunicorn -c config/gunicorn.conf.py app.wsgi:<service>``. The database bridge is
built in each worker after fork (``post_worker_init``) and closed in
``worker_exit``, which gunicorn runs only once the worker has stopped serving: a
SIGTERM lets in-flight requests finish on a live pool first.
"""
import os
import shutil

public_bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
bind = [public_bind]
if os.environ.get("SERVICE_NAME") == "gateway":
    # The web console's API calls come in on a listener of their own, served by threads of
    # their own (config/gunicorn_worker.py): a page a gateway thread waits on never queues
    # its own API calls behind it. GATEWAY_CONSOLE_PORT="" leaves it out.
    console_port = os.environ.get("GATEWAY_CONSOLE_PORT", "8006")
    if console_port:
        bind.append(f"{public_bind.rpartition(':')[0]}:{console_port}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread, answering its own refusals as problem+json and closing after a refused body.
worker_class = "config.gunicorn_worker.ThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
accesslog = None  # the app writes one structured access line per request
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = f"oms-{os.environ.get('SERVICE_NAME', 'http')}"
# gunicorn 27's control socket defaults to one path shared by every master on the
# machine; give each instance its own.
control_socket = os.environ.get(
    "GUNICORN_CONTROL_SOCKET", f"/tmp/oms-gunicorn-{os.environ.get('SERVICE_NAME', 'http')}-{public_bind.rpartition(':')[2]}.ctl"
)


def on_starting(server):
    # Prometheus multiprocess files of a previous run would be summed into this one.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def _advertised_url(settings) -> str:
    """The URL other processes reach this instance at (ADVERTISE_URL in containers)."""
    if settings.advertise_url:
        return settings.advertise_url
    host, _, port = public_bind.rpartition(":")
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


def post_worker_init(worker):
    from app import registry
    from config.settings import WEB
    from infra import runtime
    from services import wiring

    app = worker.app.wsgi()
    settings, service = app.extensions["settings"], app.extensions["service"]
    if service == WEB:
        # The web console calls the gateway and keeps carts in Redis: no pool, no registry
        # row (the gateway finds it at WEB_URL).
        runtime.boot(settings.service_name or service, settings=settings, connect=False)
        return
    # A service whose domain has an outbox hands committed events to Celery at once.
    publisher = None
    if any(domain.name == service and domain.outbox for domain in wiring()):
        from workers.relay import publish as publisher
    # It logs in to PostgreSQL as the role of what it serves (infra/roles.py).
    runtime.boot(settings.service_name or service, settings=settings, role=service, publisher=publisher)
    if settings.registry_enabled:
        registry.start(service=service, url=_advertised_url(settings), interval=settings.registry_heartbeat_seconds)


def worker_exit(server, worker):
    from app import registry
    from infra import runtime

    registry.stop()
    closers = []
    if runtime.current() is not None and runtime.has_publisher():
        from workers.relay import publisher

        closers.append(publisher.flush)  # what was committed goes out before the pool closes
    runtime.shutdown(*closers)


def on_exit(server):
    from config.settings import WEB, load_settings

    settings = load_settings()
    service = (getattr(server.app, "app_uri", None) or "").rpartition(":")[2]  # app.wsgi:<service>
    if settings.registry_enabled and service and service != WEB:
        from app import registry
        from infra import roles

        registry.deregister_now(dsn=roles.login(settings, service).dsn, service=service,
                                url=_advertised_url(settings))


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
