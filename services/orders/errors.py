from infra.errors import InvalidState, NotFound, ValidationFailed


class OrderNotFound(NotFound):
    slug = "order-not-found"


class NotCancellable(InvalidState):
    slug = "order-not-cancellable"


class IdempotencyKeyReused(ValidationFailed):
    slug = "idempotency-key-reused"
