"""Marshmallow schemas of the orders API."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from infra.validation import Line, PageQuerySchema, Pattern

STATUSES = ("pending", "reserved", "fulfilled", "rejected", "cancelled")
REASONS = ("out_of_stock", "product_unavailable", "customer", "expired")


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


class Instant(fields.AwareDateTime):
    """An RFC 3339 / ISO 8601 date-time as UTC (one without an offset is UTC).

    Takes what RFC 3339 allows and marshmallow does not (lower-case ``t`` and ``z``, a leap
    second); a moment before year 1 or after 9999 in UTC is the first or last one Python has,
    which as a bound of a range means the same.
    """

    def __init__(self, **kwargs):
        super().__init__(format="iso", default_timezone=timezone.utc, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        leap = isinstance(value, str) and value[16:19] == ":60" and value[19:20] in ("", ".", "Z", "z", "+", "-")
        if isinstance(value, str):
            value = value.upper()
            if leap:
                value = value[:17] + "59" + value[19:]
        moment = super()._deserialize(value, attr, data, **kwargs)
        offset = moment.utcoffset()
        try:
            return moment.astimezone(timezone.utc) + timedelta(seconds=leap)
        except OverflowError:
            edge = datetime.min if offset > timedelta(0) else datetime.max
            return edge.replace(tzinfo=timezone.utc)


_NOT_A_LINE = "\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029"
_HEX = "[0-9A-Fa-f]"
_ORDER_USER_OR_EMAIL = Pattern(
    f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|[^{_NOT_A_LINE}]*@[^{_NOT_A_LINE}]*",
    error="An order id, a user id or an email.",
)


class SearchQuerySchema(PageQuerySchema):
    status = Line(validate=validate.OneOf(STATUSES))
    reason = Line(validate=validate.OneOf(REASONS))
    created_from = Instant(metadata={"description": "Orders placed at or after this time (ISO 8601; UTC "
                                                    "without an offset)", "example": "2025-01-01T00:00:00Z"})
    created_to = Instant(metadata={"description": "Orders placed before this time (ISO 8601; UTC without an offset)",
                                   "example": "2025-02-01T00:00:00Z"})
    q = Line(validate=[validate.Length(min=1, max=254), _ORDER_USER_OR_EMAIL],
             metadata={"description": "An order id, a customer's user id, or a customer's email (exact, any case)",
                       "example": "ada@example.com"})


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

