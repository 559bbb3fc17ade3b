"""The one exception tree of the domain layer; app/errors.py maps it to problem+json."""
from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain layer raises on purpose."""

    status = 400
    slug = "domain-error"
    title = "Bad request"

    def __init__(self, detail: str, *, errors: dict[str, list[str]] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFound(DomainError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, slug, title = 409, "conflict", "Conflict"


class InvalidState(Conflict):
    slug, title = "invalid-state", "Conflict with current state"


class ValidationFailed(DomainError):
    status, slug, title = 422, "validation-error", "Validation failed"


class Unauthorized(DomainError):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(DomainError):
    status, slug, title = 403, "forbidden", "Forbidden"


class Unavailable(DomainError):
    """A dependency (database, Redis, an upstream) could not answer in time."""

    status, slug, title = 503, "unavailable", "Service unavailable"

    def __init__(self, detail: str = "a dependency is unavailable, retry later", *, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = retry_after
