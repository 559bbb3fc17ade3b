"""Gunicorn settings shared by the gateway and the services.

``gunicorn -c config/gunicorn.conf.py app.wsgi:<service>``. The database bridge is
built in each worker after fork (``post_worker_init``) and closed in
``worker_exit``, which gunicorn runs only once the worker has stopped serving: a
SIGTERM lets in-flight requests finish on a live pool first.
"""
import os
import shutil

bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
accesslog = None  # the app writes one structured access line per request
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = f"oms-{os.environ.get('SERVICE_NAME', 'http')}"


def on_starting(server):
    # Prometheus multiprocess files of a previous run would be summed into this one.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def post_worker_init(worker):
    from services import runtime
    from services.errors import Unavailable

    try:
        runtime.start(worker.app.wsgi().extensions["settings"], name=os.environ.get("SERVICE_NAME", "http"))
    except Unavailable:
        # Serve anyway: /health stays up, and requests retry the pool (503 until it opens).
        worker.log.warning("database unavailable at start; the pool will be opened on demand")


def worker_exit(server, worker):
    from services import runtime

    runtime.stop()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
