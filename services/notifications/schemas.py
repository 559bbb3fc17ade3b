"""Marshmallow schemas of the notifications API."""
from marshmallow import Schema, fields

from services.validation import PageQuerySchema


ListQuerySchema = PageQuerySchema


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
