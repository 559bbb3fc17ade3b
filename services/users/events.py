"""Events the users domain emits (written to users.outbox in the business transaction)."""
from __future__ import annotations

USER_REGISTERED = "user.registered"
USER_UPDATED = "user.updated"


def user_profile(user: dict) -> dict:
    """What other domains may keep of a user: how to reach them."""
    return {
        "user_id": str(user["id"]),
        "email": user["email"],
        "name": user["name"],
        "phone": user.get("phone"),
        "updated_at": user["updated_at"].isoformat(),
    }
