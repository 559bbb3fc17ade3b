"""The gateway's own endpoints: the merged OpenAPI document, the docs page, the registry,
dead letters.

The docs page is Swagger UI from the files the ``flask-swagger-ui`` package installs,
served here under ``/api/docs/``: no CDN, so it works offline, and no inline script or
style, so it works under the strict Content-Security-Policy it is served with.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime
from http import HTTPStatus
from pathlib import Path

import flask_swagger_ui
import pybreaker
from flask import Flask, Response, abort, current_app, jsonify, send_from_directory
from marshmallow import Schema, fields, validate

from app.auth import admin_required
from app.blueprint import Blueprint, problem_response
from app.gateway.routes import ROUTES
from app.gateway.upstreams import UpstreamBusy, UpstreamDown, Upstreams
from infra import dead_letters, pagination, registry, runtime
from infra.errors import Unavailable
from infra.validation import Line, PageQuerySchema, Text

logger = logging.getLogger(__name__)

SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"
STATIC = Path(__file__).parent / "static"
# The files the page loads; anything else under /api/docs/ is a 404.
DOCS_ASSETS = {
    "swagger-ui.css": SWAGGER_UI,
    "swagger-ui-bundle.js": SWAGGER_UI,
    "favicon-32x32.png": SWAGGER_UI,
    "favicon-16x16.png": SWAGGER_UI,
    "docs.css": STATIC,
    "docs.js": STATIC,
}
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>oms API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" type="image/png" href="/api/docs/favicon-32x32.png" sizes="32x32">
<link rel="stylesheet" href="/api/docs/swagger-ui.css">
<link rel="stylesheet" href="/api/docs/docs.css">
</head><body><div id="swagger-ui"></div>
<script src="/api/docs/swagger-ui-bundle.js"></script>
<script src="/api/docs/docs.js"></script>
</body></html>"""
# Only this origin's files; no inline script or style, no eval, no frames, no plugins.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

blp = Blueprint("gateway", __name__, url_prefix="/api", description="The gateway's own operations")


class ServiceInstanceSchema(Schema):
    service = fields.String()
    instance_id = fields.String()
    url = fields.String()
    status = fields.String(validate=validate.OneOf(["up", "stale"]))
    healthy = fields.Boolean()
    started_at = fields.AwareDateTime(format="iso")
    heartbeat_at = fields.AwareDateTime(format="iso")
    heartbeat_age_seconds = fields.Float()


class ServiceInstancesSchema(Schema):
    items = fields.List(fields.Nested(ServiceInstanceSchema))


@blp.route("/services", methods=["GET"])
@blp.bearer(admin=True)
@admin_required
@blp.alt_response(200, schema=ServiceInstancesSchema, success=True, description="Instances and their health")
def services():
    """Registered service instances and their health (admin)."""
    settings = current_app.extensions["settings"]
    db = runtime.db()
    rows = db.run(registry.all_instances, db.manager(registry.SCHEMA), ttl_seconds=settings.registry_ttl_seconds)
    return jsonify(items=[{**r, "status": "up" if r["healthy"] else "stale",
                           "started_at": r["started_at"].isoformat(),
                           "heartbeat_at": r["heartbeat_at"].isoformat()} for r in rows])


# -- dead letters -----------------------------------------------------------------------
# Only the worker role may read a dead letter's message or redrive it (infra/roles.py); the
# gateway's role sees ids and redriven_at alone. So the gateway answers these routes, checks
# what it may see itself (an unknown id, one redriven already), and asks a worker for the
# rest through the broker: a page comes back on a Redis list, a redrive is done by the worker.
WORKER_ANSWER_SECONDS = 10


class DeadLetterQuerySchema(PageQuerySchema):
    state = Line(load_default="open", validate=validate.OneOf(dead_letters.STATES),
                 metadata={"description": "`open`: not redriven yet (the default); `all`: redriven ones too"})


class EventSummarySchema(Schema):
    id = Text(allow_none=True, metadata={"example": "3c5e7a9b-1d2f-4a6b-8c0d-2e4f6a8b0c1d"})
    type = Text(allow_none=True, metadata={"example": "order.placed"})
    occurred_at = Text(allow_none=True, metadata={"example": "2025-01-15T10:00:00+00:00"})
    subject = Text(allow_none=True, metadata={"description": "What the event is about: `order_id:`, `product_id:` "
                                                             "or `user_id:` and a UUID",
                                              "example": "order_id:6f1c2a4e-8f3b-4d2a-9c1e-2b7d5a9e0f11"})


class ArgsSummarySchema(Schema):
    arguments = fields.Integer(metadata={"description": "How many arguments the task had", "example": 1})
    events = fields.List(fields.Nested(EventSummarySchema),
                         metadata={"description": "The events it carried (at most 20), without their payloads"})
    more_events = fields.Integer(metadata={"description": "Events left out of `events`", "example": 0})


class DeadLetterSchema(Schema):
    id = fields.UUID()
    task_name = Text(metadata={"example": "inventory.reserve"})
    task_id = Text(allow_none=True)
    queue = Text(allow_none=True, metadata={"example": "inventory"})
    error = Text(metadata={"example": "ValueError: badly formed hexadecimal UUID string"})
    attempts = fields.Integer(metadata={"example": 1})
    created_at = fields.AwareDateTime(format="iso")
    redriven_at = fields.AwareDateTime(format="iso", allow_none=True)
    args_summary = fields.Nested(ArgsSummarySchema)


class DeadLetterPageSchema(Schema):
    items = fields.List(fields.Nested(DeadLetterSchema))
    next_cursor = Text(allow_none=True)


class RedriveSchema(Schema):
    accepted = fields.Integer(metadata={"description": "Dead letters a worker is redriving", "example": 1})


def _publish(task: str, *, expires: float | None = None, **kwargs) -> None:
    from kombu.exceptions import KombuError

    from workers.celery_app import app as celery

    try:
        celery.send_task(task, kwargs=kwargs, expires=expires)
    except (KombuError, OSError) as exc:
        logger.warning("could not publish to the broker", extra={"task": task, "error": type(exc).__name__})
        raise Unavailable("the broker is unavailable, retry later") from None


def _ask_worker(task: str, **kwargs) -> dict:
    """Publish ``task`` and wait for its answer on a Redis list of its own."""
    import redis

    reply_to = f"oms:reply:{uuid.uuid4().hex}"
    _publish(task, reply_to=reply_to, expires=WORKER_ANSWER_SECONDS, **kwargs)  # nobody waits after that
    deadline = time.monotonic() + WORKER_ANSWER_SECONDS
    client = runtime.get().redis
    while time.monotonic() < deadline:
        try:
            found = client.blpop([reply_to], timeout=1)
        except redis.RedisError:
            raise Unavailable("Redis is unavailable, retry later") from None
        if found:
            return json.loads(found[1])
    raise Unavailable("no worker answered in time, retry later", retry_after=2)


def _dead_letter(row: dict) -> dict:
    """A row as the worker sent it (JSON), for DeadLetterSchema."""
    return {**row, "created_at": datetime.fromisoformat(row["created_at"]),
            "redriven_at": row["redriven_at"] and datetime.fromisoformat(row["redriven_at"]),
            "args_summary": row["args"]}


@blp.route("/dead-letters", methods=["GET"])
@blp.bearer(admin=True)
@admin_required
@blp.arguments(DeadLetterQuerySchema, location="query")
@blp.response(200, DeadLetterPageSchema)
def list_dead_letters(query):
    """Messages whose task gave up, newest first: their task, queue, error, attempts and a summary of
    their arguments (ids and event types, never payloads) (admin)."""
    pagination.decode(query["cursor"])  # refused here, not by the worker
    page = _ask_worker(dead_letters.LIST_TASK, state=query["state"], limit=query["limit"], cursor=query["cursor"])
    return {"items": [_dead_letter(row) for row in page["items"]], "next_cursor": page["next_cursor"]}


@blp.route("/dead-letters/redrive", methods=["POST"])
@blp.bearer(admin=True)
@admin_required
@blp.response(202, RedriveSchema)
def redrive_dead_letters():
    """Send every open dead letter again; a worker does it and marks each redriven (admin)."""
    db = runtime.db()
    accepted = db.run(dead_letters.count_open, db.manager(dead_letters.SCHEMA))
    if accepted:
        _publish(dead_letters.REDRIVE_TASK, ids=None)
    return {"accepted": accepted}


@blp.route("/dead-letters/<uuid:dead_letter_id>/redrive", methods=["POST"])
@blp.bearer(admin=True)
@blp.problems(404, 409)
@admin_required
@blp.response(202, RedriveSchema)
def redrive_dead_letter(dead_letter_id):
    """Send one dead letter again; a worker does it and marks it redriven; 409 if it was already (admin)."""
    db = runtime.db()
    state = db.run(dead_letters.state, db.manager(dead_letters.SCHEMA), dead_letter_id=dead_letter_id)
    if state is None:
        raise dead_letters.DeadLetterNotFound("no such dead letter")
    if state == "redriven":
        raise dead_letters.AlreadyRedriven("this dead letter was redriven already")
    _publish(dead_letters.REDRIVE_TASK, ids=[str(dead_letter_id)])
    return {"accepted": 1}


# -- the merged document ------------------------------------------------------------------
COMPONENT_SECTIONS = ("schemas", "responses", "parameters", "examples", "requestBodies", "headers",
                      "securitySchemes", "links", "callbacks")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# What the gateway itself may answer to any operation it forwards.
GATEWAY_ERRORS = (429, 503, 504)


def own_document() -> dict:
    """The gateway's own flask-smorest document (its /api/services)."""
    return current_app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()


def _refs(node, found: set[tuple[str, str]]) -> set[tuple[str, str]]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            section, _, name = ref[len("#/components/"):].partition("/")
            found.add((section, name))
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)
    return found


def _rename_refs(node, rename):
    if isinstance(node, dict):
        out = {key: _rename_refs(value, rename) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            section, _, name = ref[len("#/components/"):].partition("/")
            out["$ref"] = f"#/components/{section}/{rename(section, name)}"
        return out
    if isinstance(node, list):
        return [_rename_refs(value, rename) for value in node]
    return node


def _platform(section: str, name: str) -> bool:
    """What every process documents alike: error responses, their Problem schema, the bearer scheme."""
    return section != "schemas" or name == "Problem"


def _shared(documents: dict[str, dict]) -> set[tuple[str, str]]:
    """Platform components that every document defining them defines alike (and that refer only to such)."""
    definitions: dict[tuple[str, str], list] = {}
    for document in documents.values():
        for section, components in document.get("components", {}).items():
            for name, definition in components.items():
                definitions.setdefault((section, name), []).append(definition)
    shared = {key for key, found in definitions.items()
              if _platform(*key) and all(d == found[0] for d in found)}
    changed = True
    while changed:
        changed = False
        for key in list(shared):
            if not _refs(definitions[key][0], set()) <= shared:
                shared.discard(key)
                changed = True
    return shared


def _reachable(document: dict) -> set[tuple[str, str]]:
    """The components the paths refer to, directly or through other components."""
    found = _refs(document["paths"], set())
    todo = list(found)
    while todo:
        section, name = todo.pop()
        for key in _refs(document["components"].get(section, {}).get(name, {}), set()) - found:
            found.add(key)
            todo.append(key)
    return found


def merge(documents: dict[str, dict]) -> dict:
    """One OpenAPI 3 document from each service's and the gateway's own.

    Paths under /api are kept as they are. The platform's components (error responses,
    the Problem schema, the bearer scheme) are kept once under their names when every
    document defines them alike; a service's own schemas are namespaced by it
    (``OrdersOrder``). Every operation also gets the errors the gateway itself answers
    (429, 503, 504), and components no operation uses are left out.
    """
    merged: dict = {
        "openapi": "3.0.3",
        "info": {"title": "oms public API", "version": "1.0",
                 "description": "Errors are application/problem+json (RFC 9457). Authenticated operations "
                                "take `Authorization: Bearer <access token>`."},
        "paths": {},
        "components": {},
        "tags": [],
    }
    shared = _shared(documents)
    for service, document in documents.items():
        prefix = service.capitalize()

        def rename(section: str, name: str, prefix=prefix) -> str:
            return name if (section, name) in shared else prefix + name

        for section, components in document.get("components", {}).items():
            target = merged["components"].setdefault(section, {})
            for name, definition in components.items():
                target[rename(section, name)] = _rename_refs(definition, rename)
        for path, item in document.get("paths", {}).items():
            if path.startswith("/api/"):
                merged["paths"].setdefault(path, {}).update(_rename_refs(item, rename))
        known = {tag["name"] for tag in merged["tags"]}
        merged["tags"].extend(tag for tag in document.get("tags", []) if tag["name"] not in known)
    responses = merged["components"].setdefault("responses", {})
    for status in GATEWAY_ERRORS:
        responses.setdefault(HTTPStatus(status).name, _with_problem_ref(problem_response(status)))
    for item in merged["paths"].values():
        for method in METHODS:
            if method in item:
                answers = item[method].setdefault("responses", {})
                for status in GATEWAY_ERRORS:
                    answers.setdefault(str(status), {"$ref": f"#/components/responses/{HTTPStatus(status).name}"})
                item[method]["responses"] = dict(sorted(answers.items(), key=lambda kv: (kv[0] == "default", kv[0])))
    used = _reachable(merged)
    merged["components"] = {
        section: dict(sorted((name, definition) for name, definition in merged["components"][section].items()
                             if section == "securitySchemes" or (section, name) in used))
        for section in COMPONENT_SECTIONS if merged["components"].get(section)
    }
    return merged


def _with_problem_ref(response: dict) -> dict:
    """A problem_response() as JSON: its schema is the shared Problem schema (the gateway's own document has it)."""
    return {**response, "content": {media: {"schema": {"$ref": "#/components/schemas/Problem"}}
                                    for media in response["content"]}}


class OpenApi:
    """The merged document, cached a little: upstreams change only on deploy."""

    def __init__(self, upstreams: Upstreams, ttl: float = 30.0):
        self.upstreams, self.ttl = upstreams, ttl
        self._document: dict | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def document(self) -> dict:
        with self._lock:
            if self._document is None or time.monotonic() - self._at > self.ttl:
                services = sorted({route.service for route in ROUTES})
                documents, missing = {"gateway": own_document()}, False
                for service in services:
                    try:
                        response = self.upstreams.request(service, "GET", "/openapi.json")
                    except (UpstreamDown, UpstreamBusy, pybreaker.CircuitBreakerError):
                        missing = True  # serve what we have; try again soon
                        continue
                    if response.status == 200:
                        documents[service] = json.loads(response.data)
                    else:
                        missing = True
                self._document = merge(documents)
                # An incomplete document is kept only briefly.
                self._at = time.monotonic() - (self.ttl - 2.0 if missing else 0.0)
            return self._document


def _docs_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def init_app(app: Flask, upstreams: Upstreams) -> None:
    openapi = OpenApi(upstreams)

    @app.get("/api/openapi.json")
    def openapi_json():
        return jsonify(openapi.document())

    @app.get("/api/docs")
    def api_docs():
        return _docs_headers(Response(DOCS_PAGE, mimetype="text/html"))

    @app.get("/api/docs/<name>")
    def api_docs_asset(name: str):
        folder = DOCS_ASSETS.get(name)
        if folder is None:
            abort(404)
        return _docs_headers(send_from_directory(folder, name, max_age=3600))
