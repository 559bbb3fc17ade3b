"""The operations console (admins only), under ``/console``: every customer's orders, the
catalog and its stock ledger, dead letters and their redrive, the service registry, and
links to the dashboards (Flower, Grafana, Jaeger) where they are configured.

The same thin views as the storefront, on the same client, cookies and CSRF protection.
The role check here is for a friendly page; the API, called with the admin's own token,
is the guard that counts.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import wraps
from urllib.parse import urlencode

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from app.web import client
from app.web.storefront import CANCELLABLE, TERMINAL, _products, _to_login, _uuid, current_user

blp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")

PAGE_SIZE = 20
STATUSES = ("pending", "reserved", "fulfilled", "rejected", "cancelled")
REASONS = ("out_of_stock", "product_unavailable", "customer", "expired")
ADMINS_ONLY = "This page is for administrators."


def admin_required(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        user = current_user()
        if user is None or not any(client.tokens()):
            return _to_login()
        if user.get("role") != "admin":
            abort(403, description=ADMINS_ONLY)
        return view(*args, **kwargs)

    return wrapper


def _api(method: str, path: str, **kwargs) -> client.Answer:
    """The API as the signed-in admin; its 403 (a role taken away since sign-in) is the page's."""
    answer = client.as_user(method, path, **kwargs)
    if answer.status == 403:
        abort(403, description=ADMINS_ONLY)
    return answer


def _expect(answer: client.Answer) -> dict:
    if answer.status == 404:
        abort(404)
    if not answer.ok:
        abort(502)
    return answer.data


@blp.app_context_processor
def _console_globals():
    settings = current_app.extensions["settings"]
    dashboards = [(name, url) for name, url in (("Flower", settings.flower_url), ("Grafana", settings.grafana_url),
                                                ("Jaeger", settings.jaeger_url)) if url]
    return {"dashboards": dashboards}


def _page_links(endpoint: str, page: dict, filters: dict, **values) -> tuple[str | None, str | None]:
    """(next page, first page) addresses keeping the filters; first only when not on it."""
    kept = {k: v for k, v in filters.items() if v}
    next_url = url_for(endpoint, **values, **kept, cursor=page["next_cursor"]) if page.get("next_cursor") else None
    first_url = url_for(endpoint, **values, **kept) if request.args.get("cursor") else None
    return next_url, first_url


@blp.get("/")
@admin_required
def home():
    return redirect(url_for("console.orders"))


# -- orders -------------------------------------------------------------------------------
def _day(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


@blp.get("/orders")
@admin_required
def orders():
    filters = {name: request.args.get(name, "").strip() for name in ("q", "status", "reason", "created_from",
                                                                      "created_to")}
    errors: dict[str, list[str]] = {}
    params: dict[str, str | int] = {"limit": PAGE_SIZE}
    for name in ("q", "status", "reason"):
        if filters[name]:
            params[name] = filters[name]
    # Days in the form, both inclusive; the API takes a window of times, "to" exclusive, in UTC.
    for name, shift in (("created_from", 0), ("created_to", 1)):
        if filters[name]:
            day = _day(filters[name])
            if day is None:
                errors[name] = ["Enter a date as YYYY-MM-DD."]
            else:
                params[name] = datetime.combine(day + timedelta(days=shift), datetime.min.time()).isoformat()
    if request.args.get("cursor"):
        params["cursor"] = request.args["cursor"]
    page = {"items": [], "next_cursor": None}
    if not errors:
        answer = _api("GET", "/api/orders/search?" + urlencode(params))
        if answer.ok:
            page = answer.data
        elif answer.status == 422:
            errors = answer.field_errors() or {"q": [answer.detail or "Check the filters."]}
            if "cursor" in errors or "limit" in errors:  # an address edited by hand: start over
                return redirect(url_for("console.orders", **{k: v for k, v in filters.items() if v}))
        else:
            abort(502)
    next_url, first_url = _page_links("console.orders", page, filters)
    return render_template("console/orders.html", orders=page["items"], filters=filters, errors=errors,
                           statuses=STATUSES, reasons=REASONS, next_url=next_url, first_url=first_url), \
        (422 if errors else 200)


@blp.get("/orders/<order_id>")
@admin_required
def order(order_id: str):
    found = _expect(_api("GET", f"/api/orders/{_uuid(order_id)}"))
    products = _products({item["product_id"] for item in found["items"]})
    return render_template("console/order.html", order=found, products=products, terminal=TERMINAL,
                           cancellable=CANCELLABLE)


@blp.post("/orders/<order_id>/cancel")
@admin_required
def cancel_order(order_id: str):
    answer = _api("POST", f"/api/orders/{_uuid(order_id)}/cancel")
    if answer.status == 404:
        abort(404)
    if answer.status == 409:
        flash("This order can no longer be cancelled.")
    elif answer.ok:
        flash("The order is cancelled.")
    return redirect(url_for("console.order", order_id=order_id))


# -- products -----------------------------------------------------------------------------
@blp.get("/products")
@admin_required
def products():
    q = request.args.get("q", "").strip()
    params: dict[str, str | int] = {"limit": PAGE_SIZE}
    if q:
        params["q"] = q
    if request.args.get("cursor"):
        params["cursor"] = request.args["cursor"]
    answer = _api("GET", "/api/inventory/products?" + urlencode(params))
    errors, page = {}, {"items": [], "next_cursor": None}
    if answer.ok:
        page = answer.data
    elif answer.status == 422:
        errors = answer.field_errors()
    else:
        abort(502)
    next_url, first_url = _page_links("console.products", page, {"q": q})
    return render_template("console/products.html", products=page["items"], q=q, errors=errors,
                           next_url=next_url, first_url=first_url), (422 if errors else 200)


def _cents(raw: str) -> int | None:
    """A price typed as 12.50 (or 12) in cents; None unless it has at most two decimals."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
        return None
    return int(value * 100)


def _api_errors(answer: client.Answer, fallback: str) -> dict[str, list[str]]:
    """The problem's field errors under the form's names (the form has a price, the API cents)."""
    errors = dict(answer.field_errors())
    if "price_cents" in errors:
        errors["price"] = errors.pop("price_cents")
    return errors or {"form": [answer.detail or fallback]}


@blp.route("/products/new", methods=["GET", "POST"])
@admin_required
def new_product():
    form = {"currency": "USD", "stock": "0"}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        form = {name: request.form.get(name, "") for name in ("sku", "name", "description", "price", "currency",
                                                              "stock")}
        body = {"sku": form["sku"].strip(), "name": form["name"].strip(), "description": form["description"],
                "currency": form["currency"].strip() or "USD"}
        price = _cents(form["price"])
        if price is None:
            errors["price"] = ["Enter a price such as 12.50."]
        body["price_cents"] = price
        try:
            body["stock"] = int(form["stock"].strip() or "0")
        except ValueError:
            errors["stock"] = ["Enter a whole number."]
        if not errors:
            answer = _api("POST", "/api/inventory/products", body=body)
            if answer.status == 201:
                flash(f"Product {answer.data['sku']} created.")
                return redirect(url_for("console.product", product_id=answer.data["id"]))
            if answer.status == 409:
                errors = {"sku": ["A product with this SKU exists already."]}
            else:
                errors = _api_errors(answer, "The product could not be created.")
    return render_template("console/product_new.html", form=form, errors=errors), (422 if errors else 200)


def _product_page(product: dict, *, edit: dict | None = None, stock: dict | None = None,
                  errors: dict | None = None, status: int = 200):
    edit = edit or {"name": product["name"], "description": product["description"] or "",
                    "price": f"{product['price_cents'] / 100:.2f}", "active": product["active"]}
    return render_template("console/product.html", product=product, edit=edit, stock=stock or {},
                           errors=errors or {}), status


def _product(product_id: str) -> dict:
    return _expect(_api("GET", f"/api/inventory/products/{_uuid(product_id)}"))


@blp.get("/products/<product_id>")
@admin_required
def product(product_id: str):
    return _product_page(_product(product_id))


@blp.post("/products/<product_id>")
@admin_required
def edit_product(product_id: str):
    product = _product(product_id)
    edit = {"name": request.form.get("name", ""), "description": request.form.get("description", ""),
            "price": request.form.get("price", ""), "active": request.form.get("active") == "1"}
    price = _cents(edit["price"])
    if price is None:
        return _product_page(product, edit=edit, errors={"price": ["Enter a price such as 12.50."]}, status=422)
    answer = _api("PATCH", f"/api/inventory/products/{product['id']}",
                  body={"name": edit["name"].strip(), "description": edit["description"], "price_cents": price,
                        "active": edit["active"]})
    if answer.ok:
        flash("Saved." if answer.data["active"] else "Saved. The product is inactive: the shop no longer sells it.")
        return redirect(url_for("console.product", product_id=product["id"]))
    if answer.status == 404:
        abort(404)
    return _product_page(product, edit=edit, errors=_api_errors(answer, "The product could not be saved."),
                         status=422)


@blp.post("/products/<product_id>/stock")
@admin_required
def adjust_stock(product_id: str):
    product = _product(product_id)
    stock = {"delta": request.form.get("delta", "").strip(), "reason": request.form.get("reason", "").strip()}
    try:
        delta = int(stock["delta"])
    except ValueError:
        return _product_page(product, stock=stock, errors={"delta": ["Enter a whole number, such as 5 or -2."]},
                             status=422)
    answer = _api("POST", f"/api/inventory/products/{product['id']}/stock",
                  body={"delta": delta, "reason": stock["reason"]})
    if answer.ok:
        flash(f"Stock changed by {delta:+d} ({stock['reason']}): {answer.data['available']} available.")
        return redirect(url_for("console.product", product_id=product["id"]))
    if answer.status == 404:
        abort(404)
    if answer.status == 409:
        # Shown next to the field that caused it, with the numbers as they are now.
        product = _product(product_id)
        message = answer.detail or "This would make the available stock negative."
        return _product_page(product, stock=stock, status=409,
                             errors={"delta": [f"{message} (available now: {product['available']})"]})
    return _product_page(product, stock=stock, errors=_api_errors(answer, "The stock could not be changed."),
                         status=422)


@blp.get("/products/<product_id>/movements")
@admin_required
def movements(product_id: str):
    product = _product(product_id)
    params: dict[str, str | int] = {"limit": PAGE_SIZE}
    if request.args.get("cursor"):
        params["cursor"] = request.args["cursor"]
    answer = _api("GET", f"/api/inventory/products/{product['id']}/movements?" + urlencode(params))
    if answer.status == 422:
        return redirect(url_for("console.movements", product_id=product["id"]))
    page = _expect(answer)
    next_url, first_url = _page_links("console.movements", page, {}, product_id=product["id"])
    return render_template("console/movements.html", product=product, movements=page["items"],
                           next_url=next_url, first_url=first_url)


# -- dead letters -------------------------------------------------------------------------
NO_WORKER = "No worker answered in time. Dead letters are read by a worker: retry in a moment."


@blp.get("/dead-letters")
@admin_required
def dead_letters():
    state = "all" if request.args.get("state") == "all" else "open"
    params: dict[str, str | int] = {"limit": PAGE_SIZE, "state": state}
    if request.args.get("cursor"):
        params["cursor"] = request.args["cursor"]
    try:
        answer = _api("GET", "/api/dead-letters?" + urlencode(params))
    except client.RateLimited:
        raise
    except client.ApiUnavailable as unavailable:
        return render_template("console/dead_letters.html", letters=[], state=state, unavailable=NO_WORKER,
                               next_url=None, first_url=None), 503, {"Retry-After": str(unavailable.retry_after)}
    if answer.status == 422:
        return redirect(url_for("console.dead_letters", state=state))
    page = _expect(answer)
    next_url, first_url = _page_links("console.dead_letters", page, {"state": state})
    return render_template("console/dead_letters.html", letters=page["items"], state=state, unavailable=None,
                           next_url=next_url, first_url=first_url)


def _redrive(path: str):
    state = "all" if request.form.get("state") == "all" else "open"
    try:
        answer = _api("POST", path)
    except client.RateLimited:
        raise
    except client.ApiUnavailable:
        flash(NO_WORKER)
        return redirect(url_for("console.dead_letters", state=state))
    if answer.status == 202:
        accepted = answer.data.get("accepted", 0)
        flash(f"Redrive accepted: {accepted} message{'' if accepted == 1 else 's'} sent again.")
    elif answer.status == 404:
        flash("There is no such dead letter.")
    elif answer.status == 409:
        flash("This dead letter was redriven already.")
    else:
        abort(502)
    return redirect(url_for("console.dead_letters", state=state))


@blp.post("/dead-letters/<letter_id>/redrive")
@admin_required
def redrive(letter_id: str):
    return _redrive(f"/api/dead-letters/{_uuid(letter_id)}/redrive")


@blp.post("/dead-letters/redrive")
@admin_required
def redrive_all():
    return _redrive("/api/dead-letters/redrive")


# -- service registry ---------------------------------------------------------------------
def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _since(stamp: str | None) -> float | None:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds() if stamp else None
    except ValueError:
        return None


@blp.get("/services")
@admin_required
def services():
    data = _expect(_api("GET", "/api/services"))
    instances = [{**item, "heartbeat_age": _age(item.get("heartbeat_age_seconds", _since(item.get("heartbeat_at")))),
                  "uptime": _age(_since(item.get("started_at")))}
                 for item in sorted(data["items"], key=lambda i: (i["service"], i["url"]))]
    return render_template("console/services.html", instances=instances)
