"""The gateway's own endpoints: the merged OpenAPI document, the docs page, the registry."""
from __future__ import annotations

import copy
import json
import threading
import time

import pybreaker
from flask import Flask, Response, jsonify

from app.auth import admin_required
from app.gateway.routes import ROUTES
from app.gateway.upstreams import UpstreamDown, Upstreams
from config.settings import Settings
from services import registry, runtime

DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>oms API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#ui"});</script>
</body></html>"""

# The gateway's own public operations, documented here since no upstream serves them.
GATEWAY_PATHS = {
    "/api/services": {"get": {
        "summary": "Registered service instances and their health (admin)", "tags": ["gateway"],
        "security": [{"bearerAuth": []}],
        "responses": {"200": {"description": "Instances"}, "401": {"description": "No valid token"},
                      "403": {"description": "Not an admin"}},
    }},
}


def merge(documents: dict[str, dict]) -> dict:
    """One OpenAPI 3 document from each service's: paths as they are, schemas namespaced."""
    merged = {
        "openapi": "3.0.3",
        "info": {"title": "oms public API", "version": "1.0"},
        "paths": copy.deepcopy(GATEWAY_PATHS),
        "components": {"schemas": {}, "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "tags": [{"name": "gateway"}],
    }
    for service, document in documents.items():
        prefix = service.capitalize()
        text = json.dumps(document).replace("#/components/schemas/", f"#/components/schemas/{prefix}")
        document = json.loads(text)
        for name, schema in document.get("components", {}).get("schemas", {}).items():
            merged["components"]["schemas"][prefix + name] = schema
        for path, item in document.get("paths", {}).items():
            if path.startswith("/api/"):
                merged["paths"].setdefault(path, {}).update(item)
        merged["tags"].extend(document.get("tags", []))
    return merged


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
                documents, missing = {}, False
                for service in services:
                    try:
                        response = self.upstreams.request(service, "GET", "/openapi.json")
                    except (UpstreamDown, pybreaker.CircuitBreakerError):
                        missing = True  # serve what we have; try again soon
                        continue
                    if response.status == 200:
                        documents[service] = json.loads(response.data)
                self._document = merge(documents)
                # An incomplete document is kept only briefly.
                self._at = time.monotonic() - (self.ttl - 2.0 if missing else 0.0)
            return self._document


def init_app(app: Flask, settings: Settings, upstreams: Upstreams) -> None:
    openapi = OpenApi(upstreams)

    @app.get("/api/openapi.json")
    def openapi_json():
        return jsonify(openapi.document())

    @app.get("/api/docs")
    def api_docs():
        return Response(DOCS_PAGE, mimetype="text/html")

    @app.get("/api/services")
    @admin_required
    def services():
        db = runtime.db()
        rows = db.run(registry.all_instances, db.manager(registry.SCHEMA), ttl_seconds=settings.registry_ttl_seconds)
        return jsonify(items=[{**r, "status": "up" if r["healthy"] else "stale",
                               "started_at": r["started_at"].isoformat(),
                               "heartbeat_at": r["heartbeat_at"].isoformat()} for r in rows])
