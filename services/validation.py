"""Marshmallow pieces every domain's schemas share."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate


def _no_control_characters(value: str) -> None:
    # PostgreSQL text cannot store U+0000, and no field of ours wants control characters.
    if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in value):
        raise ValidationError("Must not contain control characters.")


class Text(fields.String):
    """A string field that refuses NUL and other control characters."""

    def __init__(self, *args, **kwargs):
        validators = kwargs.pop("validate", None)
        if validators is None:
            validators = []
        elif callable(validators):
            validators = [validators]
        super().__init__(*args, validate=[_no_control_characters, *validators], **kwargs)


class PageQuerySchema(Schema):
    """``?limit=`` (1..100, default 20) and ``?cursor=`` of every list endpoint."""

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = Text(load_default=None)
