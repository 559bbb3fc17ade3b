from services.errors import Unavailable


class RecipientUnknown(Unavailable):
    """An order event arrived before the user's registration: retry later."""


class DeliveryFailed(Exception):
    """A transport could not deliver; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


class DeliveryPending(Unavailable):
    """Some deliveries failed transiently: the task retries them (and only them)."""
