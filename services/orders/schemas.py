"""Marshmallow schemas of the orders API."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from infra.validation import Line, PageQuerySchema


class LineSchema(Schema):
    product_id = fields.UUID(required=True)
    quantity = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1000))


class PlaceOrderSchema(Schema):
    items = fields.List(
        fields.Nested(LineSchema), required=True, validate=validate.Length(min=1, max=50),
        # What no JSON Schema keyword says (uniqueItems compares whole lines): _distinct_products below.
        metadata={"description": "1 to 50 lines, each product at most once (combine the quantities)"},
    )

    @validates_schema
    def _distinct_products(self, data, **kwargs):
        seen = set()
        for index, line in enumerate(data.get("items") or []):
            if line["product_id"] in seen:
                raise ValidationError({"items": {index: {"product_id": ["Duplicate product; combine the quantities."]}}})
            seen.add(line["product_id"])


ListQuerySchema = PageQuerySchema


class ItemSchema(Schema):
    product_id = fields.UUID()
    name = Line()
    quantity = fields.Integer()
    unit_price_cents = fields.Integer()


class HistorySchema(Schema):
    status = Line()
    reason = Line(allow_none=True)
    at = fields.AwareDateTime(format="iso")


class OrderSchema(Schema):
    id = fields.UUID()
    user_id = fields.UUID()
    status = Line()
    reason = Line(allow_none=True)
    items = fields.List(fields.Nested(ItemSchema))
    total_cents = fields.Integer()
    currency = Line()
    created_at = fields.AwareDateTime(format="iso")
    updated_at = fields.AwareDateTime(format="iso")
    history = fields.List(fields.Nested(HistorySchema))


class OrderPageSchema(Schema):
    items = fields.List(fields.Nested(OrderSchema))
    next_cursor = Line(allow_none=True)
