"""Users and auth endpoints (port 8001): thin views over services.users.service."""
from __future__ import annotations

from flask import current_app
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


def _tokens(*, user_id, role: str) -> dict:
    family, refresh_jti = service.sessions().open(user_id=str(user_id))
    return _issue(user_id=user_id, role=role, family=family, refresh_jti=refresh_jti)


def _issue(**claims) -> dict:
    ttl = current_app.extensions["settings"].access_token_ttl
    return issue_tokens(**claims, access_ttl=ttl)


@blp.route("/users")
class Users(MethodView):
    @blp.arguments(RegisterSchema)
    @blp.response(201, RegisteredSchema)
    def post(self, body):
        """Register a customer account; answers with the profile and a token pair."""
        user = service.register_user(**body)
        return {**user, **_tokens(user_id=user["id"], role=user["role"])}, 201, {
            "Location": "/api/users/me"
        }


@blp.route("/users/me")
class Me(MethodView):
    decorators = [jwt_required()]

    @blp.response(200, UserSchema)
    def get(self):
        """The caller's profile."""
        return service.get_profile(user_id=current_user_id())

    @blp.arguments(ProfilePatchSchema)
    @blp.response(200, UserSchema)
    def patch(self, changes):
        """Change the caller's name or phone."""
        return service.update_profile(user_id=current_user_id(), changes=changes)


@blp.route("/auth/login", methods=["POST"])
@blp.arguments(LoginSchema)
@blp.response(200, TokensSchema)
def login(body):
    """Exchange email and password for a token pair."""
    user = service.authenticate(email=body["email"], password=body["password"])
    return _tokens(user_id=user["id"], role=user["role"])


@blp.route("/auth/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, TokensSchema)
def refresh():
    """Rotate a refresh token (sent as Bearer): the old one stops working."""
    claims = get_jwt()
    next_jti = service.sessions().rotate(jti=claims["jti"], family=claims["fam"], user_id=claims["sub"])
    return _issue(user_id=claims["sub"], role=claims["role"], family=claims["fam"], refresh_jti=next_jti)


@blp.route("/auth/logout", methods=["POST"])
@jwt_required()
@blp.response(204)
def logout():
    """Revoke the access token and its refresh token (the whole login session)."""
    service.sessions().revoke(family=get_jwt()["fam"])
    return None
