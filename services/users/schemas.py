"""Marshmallow schemas of the users API (requests validated, responses serialised)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

_PHONE = validate.Regexp(r"^\+[1-9][0-9]{6,14}$", error="must be an E.164 number such as +14155550123")


class RegisterSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    # The upper bound keeps a hashing request from becoming a denial of service.
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=8, max=1024))
    phone = fields.String(load_default=None, allow_none=True, validate=_PHONE)


class LoginSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class ProfilePatchSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    phone = fields.String(allow_none=True, validate=_PHONE)


class UserSchema(Schema):
    id = fields.UUID()
    email = fields.String()
    name = fields.String()
    role = fields.String()
    phone = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(format="iso", default_timezone=None)
    updated_at = fields.AwareDateTime(format="iso", default_timezone=None)


class TokensSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()


class RegisteredSchema(UserSchema, TokensSchema):
    pass
