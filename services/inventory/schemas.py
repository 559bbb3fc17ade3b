"""Marshmallow schemas of the inventory API."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from infra.validation import Bool, Line, PageQuerySchema, Pattern, Text
from webargs.fields import DelimitedList

_CURRENCY = Pattern(r"[A-Z]{3}", error="must be an ISO 4217 code such as USD")
MAX_STOCK = 1_000_000_000


class ProductCreateSchema(Schema):
    sku = Line(required=True, validate=validate.Length(min=1, max=64))
    name = Line(required=True, validate=validate.Length(min=1, max=200))
    description = Text(load_default="", validate=validate.Length(max=5000))
    price_cents = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=10**12))
    currency = Line(load_default="USD", validate=_CURRENCY)
    stock = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0, max=MAX_STOCK))


class ProductPatchSchema(Schema):
    name = Line(validate=validate.Length(min=1, max=200))
    description = Text(validate=validate.Length(max=5000))
    price_cents = fields.Integer(strict=True, validate=validate.Range(min=0, max=10**12))
    active = Bool()


class StockAdjustSchema(Schema):
    delta = fields.Integer(
        required=True, strict=True,
        validate=[validate.Range(min=-MAX_STOCK, max=MAX_STOCK), validate.NoneOf([0], error="must not be 0")],
    )
    reason = Line(required=True, validate=validate.Length(min=1, max=200))


class ProductQuerySchema(PageQuerySchema):
    ids = DelimitedList(fields.UUID(), validate=validate.Length(max=100))
    q = Line(validate=validate.Length(min=1, max=100),
             metadata={"description": "Products whose name or sku contains this text (any case)", "example": "lamp"})
    in_stock = fields.Boolean(load_default=False, truthy={"true"}, falsy={"false"},
                              metadata={"description": "`true`: only products with stock available"})


class ProductSchema(Schema):
    id = fields.UUID()
    sku = Text()
    name = Text()
    description = Text()
    price_cents = fields.Integer()
    currency = Text()
    active = fields.Boolean()
    on_hand = fields.Integer()
    reserved = fields.Integer()
    available = fields.Integer()
    updated_at = fields.AwareDateTime(format="iso")


class ProductPageSchema(Schema):
    items = fields.List(fields.Nested(ProductSchema))
    next_cursor = Text(allow_none=True)


MovementQuerySchema = PageQuerySchema


class MovementSchema(Schema):
    id = fields.Integer(metadata={"description": "Increases with each movement"})
    delta = fields.Integer(metadata={"description": "Change of on-hand stock", "example": -2})
    reason = Text(metadata={"example": "order fulfilled"})
    actor = Text(metadata={"description": "`user:<id>` for an admin's change, `system` for the order pipeline",
                           "example": "system"})
    order_id = fields.UUID(allow_none=True, metadata={"description": "The order a fulfilment took the stock for"})
    created_at = fields.AwareDateTime(format="iso")


class MovementPageSchema(Schema):
    items = fields.List(fields.Nested(MovementSchema))
    next_cursor = Text(allow_none=True)
