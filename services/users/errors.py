from infra.errors import Conflict, NotFound, Throttled, Unauthorized


class EmailTaken(Conflict):
    slug = "email-taken"


class InvalidCredentials(Unauthorized):
    slug = "invalid-credentials"


class SessionRevoked(Unauthorized):
    slug = "token-revoked"


class UserNotFound(NotFound):
    slug = "user-not-found"


class LoginThrottled(Throttled):
    """Too many failed logins for one account: it waits ``retry_after`` seconds."""

    slug = "too-many-login-attempts"
