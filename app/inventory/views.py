"""Inventory endpoints (port 8003): public catalog reads, admin writes."""
from __future__ import annotations

from flask.views import MethodView
from flask_jwt_extended import get_jwt
from app.blueprint import Blueprint

from app.auth import admin_required
from services.inventory import service
from services.inventory.schemas import (
    MovementPageSchema,
    MovementQuerySchema,
    ProductCreateSchema,
    ProductPageSchema,
    ProductPatchSchema,
    ProductQuerySchema,
    ProductSchema,
    StockAdjustSchema,
)

blp = Blueprint("inventory", __name__, url_prefix="/api/inventory", description="Catalog and stock")


def _actor() -> str:
    return f"user:{get_jwt()['sub']}"


@blp.route("/products")
class Products(MethodView):
    @blp.arguments(ProductQuerySchema, location="query")
    @blp.response(200, ProductPageSchema)
    def get(self, query):
        """Active products, oldest first, with a cursor for the next page (`ids=` to pick some, `q=` to
        find a text in the name or sku, `in_stock=true` for those with stock available)."""
        return service.list_products(**query)

    @blp.bearer(admin=True)
    @blp.problems(409)
    @admin_required
    @blp.arguments(ProductCreateSchema)
    @blp.response(201, ProductSchema, headers={
        "Location": {"schema": {"type": "string"}, "required": True, "description": "/api/inventory/products/{id}"}})
    def post(self, body):
        """Create a product (admin)."""
        product = service.create_product(**body, actor=_actor())
        return product, 201, {"Location": f"/api/inventory/products/{product['id']}"}


@blp.route("/products/<uuid:product_id>")
@blp.problems(404)
class Product(MethodView):
    @blp.response(200, ProductSchema)
    def get(self, product_id):
        """One product."""
        return service.get_product(product_id=product_id)

    @blp.bearer(admin=True)
    @admin_required
    @blp.arguments(ProductPatchSchema, required=False)  # no body changes nothing: 200 as it is
    @blp.response(200, ProductSchema)
    def patch(self, changes, product_id):
        """Change a product's name, description, price or active flag (admin)."""
        return service.update_product(product_id=product_id, changes=changes)


@blp.route("/products/<uuid:product_id>/stock", methods=["POST"])
@blp.bearer(admin=True)
@blp.problems(404, 409)
@admin_required
@blp.arguments(StockAdjustSchema)
@blp.response(200, ProductSchema)
def adjust_stock(body, product_id):
    """Add or remove on-hand stock (admin); refused if available would go negative."""
    return service.adjust_stock(product_id=product_id, **body, actor=_actor())


@blp.route("/products/<uuid:product_id>/movements", methods=["GET"])
@blp.bearer(admin=True)
@blp.problems(404)
@admin_required
@blp.arguments(MovementQuerySchema, location="query")
@blp.response(200, MovementPageSchema)
def movements(query, product_id):
    """The product's stock movements (initial stock, admins' changes, fulfilments), newest first (admin)."""
    return service.list_movements(product_id=product_id, **query)
