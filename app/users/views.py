"""Users and auth endpoints (port 8001): thin views over services.users.service."""
from __future__ import annotations

from flask import current_app, request
from flask.views import MethodView
from flask_jwt_extended import get_jwt, jwt_required
from app.blueprint import Blueprint

from app.auth import current_user_id, issue_tokens
from services.users import service
from services.users.schemas import (
    LoginSchema,
    ProfilePatchSchema,
    RegisteredSchema,
    RegisterSchema,
    TokensSchema,
    UserSchema,
)

blp = Blueprint("users", __name__, url_prefix="/api", description="Users and authentication")


def _tokens(grant: dict) -> dict:
    return issue_tokens(**grant, access_ttl=current_app.extensions["settings"].access_token_ttl)


_LOCATION = {"Location": {"schema": {"type": "string"}, "required": True, "description": "/api/users/me"}}


@blp.route("/users")
class Users(MethodView):
    @blp.problems(409)
    @blp.arguments(RegisterSchema)
    @blp.response(201, RegisteredSchema, headers=_LOCATION)
    def post(self, body):
        """Register a customer account; answers with the profile and a token pair."""
        user = service.register_user(**body)
        return {**user, **_tokens(service.start_session(user_id=user["id"], role=user["role"]))}, 201, {
            "Location": "/api/users/me"
        }


@blp.route("/users/me")
@blp.bearer()
class Me(MethodView):
    decorators = [jwt_required()]

    @blp.response(200, UserSchema)
    def get(self):
        """The caller's profile."""
        return service.get_profile(user_id=current_user_id())

    @blp.arguments(ProfilePatchSchema, required=False)  # no body changes nothing: 200 as it is
    @blp.response(200, UserSchema)
    def patch(self, changes):
        """Change the caller's name or phone."""
        return service.update_profile(user_id=current_user_id(), changes=changes)


@blp.route("/auth/login", methods=["POST"])
@blp.problems(401, 429)
@blp.arguments(LoginSchema)
@blp.response(200, TokensSchema)
def login(body):
    """Exchange email and password for a token pair (429 with Retry-After after repeated failures)."""
    # The client's address as app/forwarded.py found it: behind the gateway, the users
    # service must list the gateway in TRUSTED_PROXIES to see past it.
    return _tokens(service.log_in(email=body["email"], password=body["password"], client=request.remote_addr))


@blp.route("/auth/refresh", methods=["POST"])
@blp.bearer()
@jwt_required(refresh=True)
@blp.response(200, TokensSchema)
def refresh():
    """Rotate a refresh token (sent as Bearer): the old one stops working."""
    claims = get_jwt()
    return _tokens(service.refresh_session(
        user_id=current_user_id(), family=claims["fam"], refresh_jti=claims["jti"],
        generation=int(claims.get("gen", 0)), ends_at=claims.get("sxp"),
    ))


@blp.route("/auth/logout", methods=["POST"])
@blp.bearer()
@jwt_required()
@blp.response(204)
def logout():
    """Revoke the access token and its refresh token (the whole login session)."""
    service.end_session(family=get_jwt()["fam"])
    return None


@blp.route("/auth/logout-all", methods=["POST"])
@blp.bearer()
@jwt_required()
@blp.response(204)
def logout_all():
    """Revoke every session of the caller (as a password or role change does)."""
    service.end_all_sessions(user_id=current_user_id())
    return None
