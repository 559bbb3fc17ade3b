"""Marshmallow schemas of the notifications API."""
from marshmallow import Schema, fields

from infra.validation import Line, PageQuerySchema, Text


ListQuerySchema = PageQuerySchema


class NotificationSchema(Schema):
    id = fields.UUID()
    channel = Line()
    template = Line()
    recipient = Line()
    subject = Line(allow_none=True)
    status = Line()
    attempts = fields.Integer()
    last_error = Text(allow_none=True)
    created_at = fields.AwareDateTime(format="iso")
    sent_at = fields.AwareDateTime(format="iso", allow_none=True)


class NotificationPageSchema(Schema):
    items = fields.List(fields.Nested(NotificationSchema))
    next_cursor = Line(allow_none=True)
