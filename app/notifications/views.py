"""Notifications endpoints (port 8004)."""
from __future__ import annotations

from flask_jwt_extended import jwt_required

from app.auth import current_user_id
from app.blueprint import Blueprint
from services.notifications import service
from services.notifications.schemas import ListQuerySchema, NotificationPageSchema

blp = Blueprint("notifications", __name__, url_prefix="/api/notifications", description="Notifications")


@blp.route("", methods=["GET"])
@blp.bearer()
@jwt_required()
@blp.arguments(ListQuerySchema, location="query")
@blp.response(200, NotificationPageSchema)
def list_notifications(query):
    """The caller's notifications, newest first."""
    return service.list_notifications(user_id=current_user_id(), **query)
