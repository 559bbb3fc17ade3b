"""Events the users domain emits (written to users.outbox in the business transaction)."""
from __future__ import annotations

USER_REGISTERED = "user.registered"


def user_registered(user: dict) -> dict:
    return {
        "user_id": str(user["id"]),
        "email": user["email"],
        "name": user["name"],
        "phone": user.get("phone"),
        "registered_at": user["created_at"].isoformat(),
    }
