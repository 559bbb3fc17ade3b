"""Marshmallow schemas of the notifications API."""
from marshmallow import Schema, fields, validate

from services.validation import Text


class ListQuerySchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = Text(load_default=None)


class NotificationSchema(Schema):
    id = fields.UUID()
    channel = fields.String()
    template = fields.String()
    recipient = fields.String()
    subject = fields.String(allow_none=True)
    status = fields.String()
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(format="iso")
    sent_at = fields.AwareDateTime(format="iso", allow_none=True)


class NotificationPageSchema(Schema):
    items = fields.List(fields.Nested(NotificationSchema))
    next_cursor = fields.String(allow_none=True)
