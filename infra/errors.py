"""The one exception tree of the domain layer. It knows nothing of HTTP: app/errors.py
maps each kind to a status and answers it as problem+json; ``slug`` names the problem type."""
from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain layer raises on purpose."""

    slug = "domain-error"
    title = "Bad request"

    def __init__(self, detail: str, *, errors: dict[str, list[str]] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFound(DomainError):
    slug, title = "not-found", "Not found"


class Conflict(DomainError):
    slug, title = "conflict", "Conflict"


class InvalidState(Conflict):
    slug, title = "invalid-state", "Conflict with current state"


class ValidationFailed(DomainError):
    slug, title = "validation-error", "Validation failed"


class Unauthorized(DomainError):
    slug, title = "unauthorized", "Unauthorized"


class Forbidden(DomainError):
    slug, title = "forbidden", "Forbidden"


class Unavailable(DomainError):
    """A dependency (database, Redis, an upstream) could not answer in time."""

    slug, title = "unavailable", "Service unavailable"

    def __init__(self, detail: str = "a dependency is unavailable, retry later", *, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = retry_after


class Throttled(Unavailable):
    """This caller must wait ``retry_after`` seconds (too many attempts), while others may go on."""

    slug, title = "throttled", "Too many requests"
