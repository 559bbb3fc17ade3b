"""The storefront: catalog and search, product pages, sign-up and sign-in, the cart,
checkout, my orders (their status live) and my notifications.

Thin views: read the form, call the API through ``client``, render or redirect. What
the API refuses is shown next to the field it names (problem+json ``errors``).
"""
from __future__ import annotations

import re
import uuid
from functools import wraps
from urllib.parse import unquote, urlencode, urlsplit

import jwt
import redis

from flask import (Blueprint, abort, current_app, flash, g, redirect, render_template, request, session,
                   url_for)

from app.web import cart, client
from app.web.client import ACCESS_COOKIE, REFRESH_COOKIE, SignedOut
from infra.errors import Unavailable

blp = Blueprint("storefront", __name__, template_folder="templates", static_folder="static",
                static_url_path="/static")

PAGE_SIZE = 12
TERMINAL = {"fulfilled", "rejected", "cancelled"}
CANCELLABLE = {"pending", "reserved"}


# -- who is signed in ---------------------------------------------------------------------
def current_user() -> dict | None:
    """{id, name, role} of the signed-in user (kept in the signed session cookie at sign-in,
    checked against the login session on every request: ``_session_alive``)."""
    return session.get("user")


@blp.before_app_request
def _session_alive():
    """A signed session cookie lives on in copies: on every request, the login session it was
    made for (the family and generation of its tokens, kept at sign-in) must still be open,
    as the API itself would judge those tokens. After a logout, a logout-all on any device or
    a password change, the cookie is forgotten here before anything reads the cart."""
    user = session.get("user")
    if user is None or (request.endpoint or "").endswith(".static"):
        return None  # static files read nothing of the user's: no Redis round trip for them
    family, generation = user.get("fam"), user.get("gen")
    try:
        ended = family is None or generation is None or _sessions().is_revoked(
            family=family, user_id=user["id"], generation=int(generation))
    except Unavailable:
        raise client.ApiUnavailable() from None
    if ended:
        session.clear()
        g.signed_out = True
    return None


def _sessions():
    from services.users.sessions import SessionStore

    settings = current_app.extensions["settings"]
    return SessionStore(cart.redis(), refresh_ttl=settings.refresh_token_ttl, max_age=settings.session_max_age_seconds)


def login_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if current_user() is None or not any(client.tokens()):
            return _to_login()
        return view(*args, **kwargs)

    return wrapper


def _to_login():
    target = url_for("storefront.login", next=request.full_path.rstrip("?") if request.method == "GET" else None)
    if request.headers.get("HX-Request"):
        return "", 204, {"HX-Redirect": target}
    return redirect(target)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe_next(value: str | None) -> str:
    """A path of this site to go back to after signing in; anything else is the home page.

    Browsers drop tabs and newlines from a Location and read a backslash as a slash, so
    ``/<TAB>/evil.example`` or ``/\\evil.example`` would leave the site: a control character or
    a backslash anywhere (as written or once decoded), a scheme, a host, or a path that is not
    absolute sends the browser home."""
    home = url_for("storefront.catalog")
    if not value or _CONTROL.search(value):
        return home
    decoded = unquote(value)
    if _CONTROL.search(decoded) or "\\" in decoded:
        return home
    parts = urlsplit(decoded)
    if parts.scheme or parts.netloc or not decoded.startswith("/") or decoded.startswith("//"):
        return home
    return value


@blp.app_errorhandler(client.StaleRefresh)
def _stale_refresh(error):
    # Its cookies stay: the browser holds the newer pair already, and this answer must not
    # delete it. Only this late request is sent to sign in.
    flash("Please sign in again.")
    return _to_login()


@blp.app_errorhandler(SignedOut)
def _signed_out(error):
    session.pop("user", None)
    g.signed_out = True
    flash("Your session has ended. Please sign in again.")
    return _to_login()


@blp.after_app_request
def _token_cookies(response):
    settings = current_app.extensions["settings"]
    options = {"httponly": True, "samesite": "Lax", "secure": settings.secure_cookies, "path": "/"}
    if g.get("signed_out"):
        response.delete_cookie(ACCESS_COOKIE, **options)
        response.delete_cookie(REFRESH_COOKIE, **options)
    elif g.get("new_tokens"):
        pair = g.new_tokens
        response.set_cookie(ACCESS_COOKIE, pair["access_token"], max_age=pair.get("expires_in") or None, **options)
        response.set_cookie(REFRESH_COOKIE, pair["refresh_token"], max_age=settings.refresh_token_ttl, **options)
    return response


@blp.app_context_processor
def _globals():
    user = current_user()
    count = 0
    if user is not None:
        try:
            count = sum(cart.lines(user["id"]).values())
        except redis.RedisError:  # the header's cart count is not worth failing a page for
            count = 0
    return {"user": user, "cart_count": count, "money": money}


def money(cents: int | None, currency: str = "USD") -> str:
    if cents is None:
        return ""
    return f"{currency} {cents / 100:,.2f}"


def _sign_in(pair: dict) -> None:
    """Keep the pair in cookies and who it is in the session (a fresh one: no fixation)."""
    g.new_tokens = pair
    me = client.gateway().call("GET", "/api/users/me", token=pair["access_token"])
    if me.status != 200:
        raise SignedOut()
    # The login session the pair belongs to (read from the token the API just issued us; the
    # API checks its signature on every call): what _session_alive asks about.
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    session.clear()
    session.permanent = True
    session["user"] = {"id": me.data["id"], "name": me.data["name"], "role": me.data["role"],
                       "fam": claims.get("fam"), "gen": claims.get("gen", 0)}


# -- catalog ------------------------------------------------------------------------------
@blp.get("/")
def catalog():
    q = request.args.get("q", "").strip()
    in_stock = request.args.get("in_stock") == "1"
    cursor = request.args.get("cursor") or None
    params = {"limit": PAGE_SIZE}
    if q:
        params["q"] = q
    if in_stock:
        params["in_stock"] = "true"
    if cursor:
        params["cursor"] = cursor
    answer = client.anonymous("GET", "/api/inventory/products?" + urlencode(params))
    errors, page = {}, {"items": [], "next_cursor": None}
    if answer.ok:
        page = answer.data
    elif answer.status == 422:
        errors = answer.field_errors()
    else:
        abort(answer.status if answer.status in (400, 404) else 502)
    next_url = None
    if page["next_cursor"]:
        next_url = url_for("storefront.catalog", **{k: v for k, v in (("q", q), ("in_stock", "1" if in_stock else ""))
                                                     if v}, cursor=page["next_cursor"])
    return render_template("catalog.html", products=page["items"], q=q, in_stock=in_stock, errors=errors,
                           next_url=next_url, paged=bool(cursor))


@blp.get("/products/<product_id>")
def product(product_id: str):
    answer = client.anonymous("GET", f"/api/inventory/products/{_uuid(product_id)}")
    if answer.status == 404:
        abort(404)
    if not answer.ok or not answer.data.get("active"):
        abort(404)
    return render_template("product.html", product=answer.data)


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        abort(404)


# -- accounts -----------------------------------------------------------------------------
@blp.route("/register", methods=["GET", "POST"])
def register():
    errors, form = {}, {}
    if request.method == "POST":
        form = {"email": request.form.get("email", "").strip(), "name": request.form.get("name", "").strip()}
        body = {**form, "password": request.form.get("password", "")}
        answer = client.anonymous("POST", "/api/users", body=body)
        if answer.status == 201:
            _sign_in({k: answer.data[k] for k in ("access_token", "refresh_token", "expires_in")})
            flash("Welcome! Your account is ready.")
            return redirect(_safe_next(request.form.get("next")))
        if answer.status == 409:
            errors = {"email": ["This email is registered already. Sign in instead?"]}
        else:
            errors = answer.field_errors() or {"form": [answer.detail or "Registration failed."]}
    return render_template("register.html", errors=errors, form=form, next=request.values.get("next", "")), \
        (422 if errors else 200)


@blp.route("/login", methods=["GET", "POST"])
def login():
    errors, form = {}, {}
    if request.method == "POST":
        form = {"email": request.form.get("email", "").strip()}
        try:
            answer = client.anonymous("POST", "/api/auth/login",
                                      body={**form, "password": request.form.get("password", "")})
        except client.RateLimited as limited:
            errors = {"form": [f"Too many attempts. Try again in {limited.retry_after} seconds."]}
        else:
            if answer.status == 200:
                _sign_in(answer.data)
                return redirect(_safe_next(request.form.get("next")))
            if answer.status == 401:
                errors = {"form": ["Wrong email or password."]}
            else:
                errors = answer.field_errors() or {"form": [answer.detail or "Signing in failed."]}
    return render_template("login.html", errors=errors, form=form, next=request.values.get("next", "")), \
        (422 if errors else 200)


@blp.post("/logout")
def logout():
    if any(client.tokens()):
        try:
            client.as_user("POST", "/api/auth/logout")
        except SignedOut:
            pass  # ended already
    session.clear()
    g.signed_out = True
    flash("You are signed out.")
    return redirect(url_for("storefront.catalog"))


# -- cart and checkout --------------------------------------------------------------------
def _quantity(raw: str | None) -> int | None:
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if 0 <= value <= cart.MAX_QUANTITY else None


def _products(ids) -> dict[str, dict]:
    ids = list(ids)
    if not ids:
        return {}
    answer = client.anonymous("GET", "/api/inventory/products?" + urlencode({"ids": ",".join(ids), "limit": 100}))
    return {p["id"]: p for p in answer.data["items"]} if answer.ok else {}


def _cart_view(user_id: str) -> tuple[list[dict], int]:
    items = cart.lines(user_id)
    products = _products(items)
    rows = [{"product": products.get(pid), "product_id": pid, "quantity": qty} for pid, qty in items.items()]
    total = sum(r["product"]["price_cents"] * r["quantity"] for r in rows if r["product"])
    return rows, total


@blp.get("/cart")
@login_required
def view_cart():
    rows, total = _cart_view(current_user()["id"])
    return render_template("cart.html", rows=rows, total=total, errors={})


_CART_FULL = f"A cart holds at most {cart.MAX_LINES} different products."


def _sold(product_id: str) -> dict:
    """The product, if it exists and is sold; a 404 page otherwise."""
    answer = client.anonymous("GET", f"/api/inventory/products/{product_id}")
    if not answer.ok or not answer.data.get("active"):
        abort(404)
    return answer.data


@blp.post("/cart/add")
@login_required
def add_to_cart():
    product_id = _uuid(request.form.get("product_id", ""))
    quantity = _quantity(request.form.get("quantity", "1"))
    back = _safe_next(request.form.get("next"))
    found = _sold(product_id)
    refused = None if quantity else f"Choose a quantity from 1 to {cart.MAX_QUANTITY}."
    if refused is None:
        try:
            cart.add(current_user()["id"], product_id, quantity)
        except cart.CartFull:
            refused = _CART_FULL
    if refused is not None:  # next to the quantity field, on the product's page
        return render_template("product.html", product=found, back=back, cart_errors={"quantity": [refused]}), 422
    flash(f"Added {quantity} × {found['name']} to your cart.")
    return redirect(back)


@blp.post("/cart/update")
@login_required
def update_cart():
    user_id = current_user()["id"]
    product_id = _uuid(request.form.get("product_id", ""))
    quantity = 0 if "remove" in request.form else _quantity(request.form.get("quantity"))
    refused = None if quantity is not None else f"Choose a quantity from 0 to {cart.MAX_QUANTITY}."
    if refused is None:
        if quantity > 0 and product_id not in cart.lines(user_id):
            _sold(product_id)  # a new line: only a product that is sold
        try:
            cart.set_quantity(user_id, product_id, quantity)
        except cart.CartFull:
            refused = _CART_FULL
    if refused is not None:  # next to that line's quantity (or above the cart for a new one)
        rows, total = _cart_view(user_id)
        return render_template("cart.html", rows=rows, total=total, errors={product_id: [refused]}), 422
    return redirect(url_for("storefront.view_cart"))


@blp.get("/checkout")
@login_required
def checkout():
    user_id = current_user()["id"]
    rows, total = _cart_view(user_id)
    if not rows:
        return redirect(url_for("storefront.view_cart"))
    return render_template("checkout.html", rows=rows, total=total, key=cart.checkout_key(user_id), errors={})


@blp.post("/checkout")
@login_required
def place_order():
    user_id = current_user()["id"]
    key = request.form.get("key", "")
    done = cart.placed(user_id, key)
    if done is None and cart.current_checkout(user_id) != key:
        done = cart.placed(user_id, key)  # placed by the other click meanwhile?
        if done is None:
            flash("Your cart changed. Please check it again.")
            return redirect(url_for("storefront.checkout"))
    if done is not None:
        return redirect(url_for("storefront.order", order_id=done))
    items = cart.lines(user_id)
    if not items:
        return redirect(url_for("storefront.view_cart"))
    body = {"items": [{"product_id": pid, "quantity": qty} for pid, qty in sorted(items.items())]}
    answer = client.as_user("POST", "/api/orders", body=body, headers={"Idempotency-Key": key})
    if answer.status in (200, 202):
        cart.mark_placed(user_id, key, answer.data["id"])
        flash("Thank you! Your order is placed.")
        return redirect(url_for("storefront.order", order_id=answer.data["id"]))
    rows, total = _cart_view(user_id)
    errors = answer.field_errors() or {"form": [answer.detail or "The order could not be placed."]}
    return render_template("checkout.html", rows=rows, total=total, key=key, errors=errors), 422


# -- my orders ----------------------------------------------------------------------------
@blp.get("/orders")
@login_required
def orders():
    params = {"limit": 20}
    if request.args.get("cursor"):
        params["cursor"] = request.args["cursor"]
    answer = client.as_user("GET", "/api/orders?" + urlencode(params))
    if answer.status == 422:
        return redirect(url_for("storefront.orders"))
    page = answer.data
    next_url = url_for("storefront.orders", cursor=page["next_cursor"]) if page.get("next_cursor") else None
    return render_template("orders.html", orders=page["items"], next_url=next_url, terminal=TERMINAL)


def _order(order_id: str) -> dict:
    answer = client.as_user("GET", f"/api/orders/{_uuid(order_id)}")
    if answer.status in (403, 404):
        abort(404)  # another customer's order is a 404 (the API says so)
    return answer.data


@blp.get("/orders/<order_id>")
@login_required
def order(order_id: str):
    found = _order(order_id)
    products = _products({item["product_id"] for item in found["items"]})
    return render_template("order.html", order=found, products=products, terminal=TERMINAL,
                           cancellable=CANCELLABLE)


@blp.get("/orders/<order_id>/status")
@login_required
def order_status(order_id: str):
    """The fragment htmx polls every second until the order is terminal (it then stops)."""
    found = _order(order_id)
    template = "_order_live.html" if request.args.get("part") == "detail" else "_order_status.html"
    return render_template(template, order=found, terminal=TERMINAL, cancellable=CANCELLABLE)


@blp.post("/orders/<order_id>/cancel")
@login_required
def cancel_order(order_id: str):
    answer = client.as_user("POST", f"/api/orders/{_uuid(order_id)}/cancel")
    if answer.status in (403, 404):
        abort(404)
    if answer.status == 409:
        flash("This order can no longer be cancelled.")
    elif answer.ok:
        flash("Your order is cancelled.")
    return redirect(url_for("storefront.order", order_id=order_id))


# -- my notifications ---------------------------------------------------------------------
@blp.get("/notifications")
@login_required
def notifications():
    params = {"limit": 20}
    if request.args.get("cursor"):
        params["cursor"] = request.args["cursor"]
    answer = client.as_user("GET", "/api/notifications?" + urlencode(params))
    if answer.status == 422:
        return redirect(url_for("storefront.notifications"))
    page = answer.data
    next_url = url_for("storefront.notifications", cursor=page["next_cursor"]) if page.get("next_cursor") else None
    return render_template("notifications.html", notifications=page["items"], next_url=next_url)
