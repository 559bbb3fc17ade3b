"""Error conventions that no public users route reaches yet (403, 405, unexpected errors)."""
from __future__ import annotations

import json
import uuid

from app import create_app
from app.auth import admin_required


def _app(settings):
    app = create_app("users", settings)

    @app.get("/test/admin-only")
    @admin_required
    def admin_only():
        return {"ok": True}

    @app.get("/test/boom")
    def boom():
        raise RuntimeError("SELECT secret FROM internals")

    return app


def _customer_token(client) -> str:
    r = client.post("/api/users", json={"email": f"c-{uuid.uuid4().hex[:8]}@example.com", "name": "C", "password": "long enough"})
    assert r.status_code == 201
    return r.json["access_token"]


def test_authenticated_but_not_allowed_is_403(rt, settings):
    client = _app(settings).test_client()
    token = _customer_token(client)
    r = client.get("/test/admin-only", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.mimetype == "application/problem+json"
    assert r.json["status"] == 403 and r.json["title"] == "Forbidden"
    assert client.get("/test/admin-only").status_code == 401


def test_an_unexpected_error_is_a_500_problem_that_leaks_nothing(rt, settings):
    client = _app(settings).test_client()
    r = client.get("/test/boom")
    assert r.status_code == 500 and r.mimetype == "application/problem+json"
    assert "SELECT" not in r.get_data(as_text=True) and "RuntimeError" not in r.get_data(as_text=True)


def test_a_wrong_method_is_a_405_problem(rt, settings):
    r = _app(settings).test_client().delete("/api/users")
    assert r.status_code == 405 and r.mimetype == "application/problem+json"
    assert "POST" in r.headers["Allow"]
    assert json.loads(r.get_data())["status"] == 405
