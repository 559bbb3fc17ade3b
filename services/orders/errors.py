from infra.errors import InvalidState, NotFound, Unavailable, ValidationFailed


class OrderNotFound(NotFound):
    slug = "order-not-found"


class NotCancellable(InvalidState):
    slug = "order-not-cancellable"


class IdempotencyKeyReused(ValidationFailed):
    slug = "idempotency-key-reused"


class PipelineOverloaded(Unavailable):
    """Orders placed now would not be fulfilled within the latency budget: come back later."""

    slug = "pipeline-overloaded"
