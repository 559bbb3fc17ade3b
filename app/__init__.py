"""Flask side: the app factory. ``create_app(service)`` is the only way to build an app.

Building an app connects to nothing and configures no process-wide state: the process
is set up by ``infra.runtime.boot`` in gunicorn's worker hook (config/gunicorn.conf.py).
"""
from __future__ import annotations

from flask import Flask

from config.settings import DEFAULT_PORTS, Settings, settings_or_exit

MAX_BODY_BYTES = 1024 * 1024


def create_app(service: str, settings: Settings | None = None) -> Flask:
    if service not in DEFAULT_PORTS:
        raise ValueError(f"unknown service {service!r}; one of {sorted(DEFAULT_PORTS)}")
    settings = settings or settings_or_exit()

    from app import errors, guard, ops
    from config import tracing
    from app.blueprint import Api
    from services.users.sessions import store as sessions

    # No app-wide /static: on the gateway that path is the web console's, which serves its own.
    app = Flask(f"oms.{service}", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE=f"oms {service}",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=None if service == "web" else "/",  # the web console serves HTML, no API
        OPENAPI_JSON_PATH="openapi.json",
    )
    app.json.sort_keys = False
    app.extensions["settings"] = settings
    app.extensions["service"] = service
    api = Api(app)
    errors.register(app)  # after Api(): ours replaces flask-smorest's JSON error format

    from app.auth import init_jwt

    init_jwt(app, settings, is_revoked=lambda **kw: sessions().is_revoked(**kw))
    if service == "web":
        from app import web

        # The web console has no database: it needs its Redis (carts) and the gateway.
        ready_checks = {"redis": web.check_redis, "gateway": web.check_gateway}
    else:
        ready_checks = {"postgres": ops.check_database, "redis": ops.check_redis}
    # Hooks run in the order registered: the trace span, request id and access log first,
    # then the refusals no rule may see (non-canonical paths, oversized bodies), then the
    # rules (limits, routing, auth), so that every answer, a refusal too, is traced and logged.
    tracing.instrument_flask(app)
    ops.register(app, service=service, ready_checks=ready_checks)
    guard.init_app(app)
    if service == "gateway":
        from app.gateway import proxy

        proxy.init_app(app, settings, ready_checks)
    if service == "web":
        web.init_app(app, settings)  # the storefront (and the place of the operations console)
    for blueprint in _blueprints(service):
        api.register_blueprint(blueprint)
    from app.forwarded import ClientAddress

    app.wsgi_app = ClientAddress(app.wsgi_app, trusted=settings.trusted_proxies,
                                 forwarding_port=settings.gateway_console_port if service == "gateway" else None)
    return app


def _blueprints(service: str) -> list:
    if service == "users":
        from app.users.views import blp
    elif service == "orders":
        from app.orders.views import blp
    elif service == "inventory":
        from app.inventory.views import blp
    elif service == "notifications":
        from app.notifications.views import blp
    elif service == "gateway":
        from app.gateway.views import blp  # its own operations (/api/services); the rest is forwarded
    else:
        return []
    return [blp]
