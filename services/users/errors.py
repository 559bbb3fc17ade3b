from services.errors import Conflict, NotFound, Unauthorized


class EmailTaken(Conflict):
    slug = "email-taken"


class InvalidCredentials(Unauthorized):
    slug = "invalid-credentials"


class SessionRevoked(Unauthorized):
    slug = "token-revoked"


class UserNotFound(NotFound):
    slug = "user-not-found"
