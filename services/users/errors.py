from infra.errors import Conflict, NotFound, Unauthorized, Unavailable


class EmailTaken(Conflict):
    slug = "email-taken"


class InvalidCredentials(Unauthorized):
    slug = "invalid-credentials"


class SessionRevoked(Unauthorized):
    slug = "token-revoked"


class UserNotFound(NotFound):
    slug = "user-not-found"


class LoginThrottled(Unavailable):
    """Too many failed logins for one account: it waits ``retry_after`` seconds.

    A kind of Unavailable (try again later) so that the one error mapping answers it
    with its Retry-After; its status is 429, not 503.
    """

    status, slug, title = 429, "too-many-login-attempts", "Too many requests"
