"""The web console: server-rendered HTML (Jinja, htmx) served by the gateway at ``/``.

A backend-for-frontend: every page calls the public API through the gateway with the
signed-in user's own token (``client.py``), so auth, limits and roles hold exactly as
for any API client. The tokens live in HttpOnly cookies, every form carries a CSRF
token (Flask-WTF), and every page is served under a Content-Security-Policy that allows
no inline script or style. htmx only enhances: every action is a plain form POST and a
redirect too.

Blueprints: the storefront (``storefront.py``) and the operations console for admins
(``console.py``, under ``/console``), on the same client, cookies and CSRF protection.
"""
from __future__ import annotations

from flask import Flask, Response, render_template
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from config.settings import Settings

# Only this origin's files; no inline script or style, no eval, no frames, no plugins.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

csrf = CSRFProtect()


def init_app(app: Flask, settings: Settings) -> None:
    from app.web import client, console, storefront

    app.secret_key = str(settings.web_secret_key)
    app.config.update(
        # The session cookie holds who is signed in and the CSRF secret; the tokens have cookies of their own.
        SESSION_COOKIE_NAME="oms_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=settings.session_max_age_seconds,
        # The token lives as long as the session cookie, not an hour: a page left open still posts.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_HEADERS=["X-CSRFToken"],
        # Served behind the gateway over plain HTTP on the inside: the Referer check of
        # HTTPS requests would see http:// here. SameSite=Lax and the token do the work.
        WTF_CSRF_SSL_STRICT=False,
        TEMPLATES_AUTO_RELOAD=not settings.production,
    )
    app.jinja_env.autoescape = True  # every template, whatever its name
    app.extensions["web_client"] = client.Gateway(settings)
    csrf.init_app(app)
    app.register_blueprint(storefront.blp)
    app.register_blueprint(console.blp)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _csrf_refused)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(client.ApiUnavailable, _api_unavailable)


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("X-Frame-Options", "DENY")
    if response.mimetype == "text/html":
        # Pages show a user's own data: never kept by a shared cache, never shown from history after logout.
        response.headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response


def _csrf_refused(error: CSRFError):
    return render_template("error.html", status=400, title="Form expired",
                           detail="This form is out of date. Go back, reload the page and try again."), 400


def _http_error(error: HTTPException):
    status = error.code or 500
    titles = {404: "Not found", 403: "Forbidden", 405: "Not allowed", 413: "Too large", 400: "Bad request"}
    response = Response(render_template("error.html", status=status, title=titles.get(status, "Error"),
                                        detail=error.description if status not in (404,) else
                                        "There is nothing at this address."),
                        status=status, mimetype="text/html")
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _api_unavailable(error):
    if error.status == 429:
        title, detail = "Slow down", "Too many requests in a short time. Wait a moment and try again."
    else:
        title, detail = "Unavailable", "The shop is busy or briefly unavailable. Try again in a moment."
    response = Response(render_template("error.html", status=error.status, title=title, detail=detail),
                        status=error.status, mimetype="text/html")
    response.headers["Retry-After"] = str(error.retry_after)
    return response


def check_gateway() -> None:
    """Readiness: the gateway answers its /health."""
    from flask import current_app

    current_app.extensions["web_client"].health()


def check_redis() -> None:
    from app.web import cart

    cart.ping()
