"""Marshmallow schemas of the users API (requests validated, responses serialised)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from infra.validation import Email, Line, Pattern, Text

_PHONE = Pattern(r"\+[1-9][0-9]{6,14}", error="must be an E.164 number such as +14155550123")


class RegisterSchema(Schema):
    email = Email(required=True)
    name = Line(required=True, validate=validate.Length(min=1, max=200))
    # One line of any printable Unicode. The upper bound keeps a hashing request from
    # becoming a denial of service.
    password = Line(required=True, load_only=True, validate=validate.Length(min=8, max=1024))
    phone = Line(load_default=None, allow_none=True, validate=_PHONE)


class LoginSchema(Schema):
    email = Line(required=True, validate=validate.Length(min=1, max=254))
    # Text, not Line: passwords registered before tabs and line breaks were refused keep working.
    password = Text(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class ProfilePatchSchema(Schema):
    name = Line(validate=validate.Length(min=1, max=200))
    phone = Line(allow_none=True, validate=_PHONE)


class UserSchema(Schema):
    id = fields.UUID()
    email = Text()
    name = Text()
    role = Text()
    phone = Text(allow_none=True)
    created_at = fields.AwareDateTime(format="iso", default_timezone=None)
    updated_at = fields.AwareDateTime(format="iso", default_timezone=None)


class TokensSchema(Schema):
    access_token = Text()
    refresh_token = Text()
    token_type = Text()
    expires_in = fields.Integer()


class RegisteredSchema(UserSchema, TokensSchema):
    pass
