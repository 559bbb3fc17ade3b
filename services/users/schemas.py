"""Marshmallow schemas of the users API (requests validated, responses serialised)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from services.validation import Text

_PHONE = validate.Regexp(r"^\+[1-9][0-9]{6,14}$", error="must be an E.164 number such as +14155550123")


class RegisterSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    name = Text(required=True, validate=validate.Length(min=1, max=200))
    # The upper bound keeps a hashing request from becoming a denial of service.
    password = Text(required=True, load_only=True, validate=validate.Length(min=8, max=1024))
    phone = Text(load_default=None, allow_none=True, validate=_PHONE)


class LoginSchema(Schema):
    email = Text(required=True, validate=validate.Length(min=1, max=254))
    password = Text(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class ProfilePatchSchema(Schema):
    name = Text(validate=validate.Length(min=1, max=200))
    phone = Text(allow_none=True, validate=_PHONE)


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
