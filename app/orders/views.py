"""Orders endpoints (port 8002)."""
from __future__ import annotations

from flask import request
from flask.views import MethodView
from flask_jwt_extended import get_jwt, jwt_required
from app.blueprint import Blueprint

from app.auth import admin_required, current_user_id
from infra.errors import ValidationFailed
from services.orders import service
from services.orders.schemas import (
    ListQuerySchema,
    OrderPageSchema,
    OrderSchema,
    PlaceOrderSchema,
    SearchQuerySchema,
)

blp = Blueprint("orders", __name__, url_prefix="/api/orders", description="Orders")


def _is_admin() -> bool:
    return get_jwt().get("role") == "admin"


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 255 and key.isprintable()):
        raise ValidationFailed("the Idempotency-Key header is not valid",
                               errors={"Idempotency-Key": ["Must be 1 to 255 printable characters."]})
    return key


_LOCATION = {"Location": {"schema": {"type": "string"}, "required": True, "description": "/api/orders/{id}"}}
_PRINTABLE = "[\\x21-\\x7e\\xa1-\\xac\\xae-\\xff]"
_PRINTABLE_OR_SPACE = "[\\x20-\\x7e\\xa1-\\xac\\xae-\\xff]"
_IDEMPOTENCY_KEY = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    "description": "The same key and body from the same user answers the order placed the first time "
                   "(200), creating nothing; the same key with another body -> 422. Kept 24 hours at least.",
    # What _idempotency_key() takes: 1 to 255 printable characters, as HTTP carries them (Latin-1,
    # without the spaces at either end that HTTP strips).
    "schema": {"type": "string", "minLength": 1, "maxLength": 255,
               "pattern": f"^{_PRINTABLE}(?:{_PRINTABLE_OR_SPACE}*{_PRINTABLE})?$"},
}


@blp.route("")
@blp.bearer()
class Orders(MethodView):
    decorators = [jwt_required()]

    @blp.doc(parameters=[_IDEMPOTENCY_KEY])
    @blp.arguments(PlaceOrderSchema)
    @blp.response(202, OrderSchema, headers=_LOCATION,
                  description="Accepted: status pending; unknown or inactive products -> 422; the pipeline over "
                              "its latency budget -> 503 with Retry-After (nothing created)")
    @blp.alt_response(200, schema=OrderSchema, headers=_LOCATION, success=True,
                      description="The order an earlier request with this Idempotency-Key placed")
    def post(self, body):
        """Place an order; it is reserved and fulfilled asynchronously."""
        order, created = service.place_order(
            user_id=current_user_id(), lines=body["items"], idempotency_key=_idempotency_key()
        )
        return order, 202 if created else 200, {"Location": f"/api/orders/{order['id']}"}

    @blp.arguments(ListQuerySchema, location="query")
    @blp.response(200, OrderPageSchema)
    def get(self, query):
        """The caller's orders, newest first."""
        return service.list_orders(user_id=current_user_id(), **query)


@blp.route("/search", methods=["GET"])
@blp.bearer(admin=True)
@admin_required
@blp.arguments(SearchQuerySchema, location="query")
@blp.response(200, OrderPageSchema)
def search(query):
    """Every customer's orders, newest first, by status, reason, time placed, order id, user id or
    customer email (admin)."""
    return service.search_orders(**query)


@blp.route("/<uuid:order_id>")
@blp.bearer()
@blp.problems(404)
class Order(MethodView):
    decorators = [jwt_required()]

    @blp.response(200, OrderSchema)
    def get(self, order_id):
        """One order (its owner or an admin)."""
        return service.get_order(order_id=order_id, user_id=current_user_id(), is_admin=_is_admin())


@blp.route("/<uuid:order_id>/cancel", methods=["POST"])
@blp.bearer()
@blp.problems(404, 409)
@jwt_required()
@blp.response(200, OrderSchema)
def cancel(order_id):
    """Cancel a pending or reserved order; 409 once it is past that."""
    return service.cancel_order(order_id=order_id, user_id=current_user_id(), is_admin=_is_admin())
