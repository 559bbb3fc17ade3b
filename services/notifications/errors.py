from infra.errors import Unavailable


class RecipientUnknown(Unavailable):
    """An order event arrived before the user's registration: retry later."""


class DeliveryFailed(Exception):
    """A transport could not deliver; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


class DeliveryPending(Unavailable):
    """Some deliveries failed transiently: the task retries them (and only them)."""


class OutcomesUnrecorded(Unavailable):
    """Deliveries were made but the database could not record them: the retry records
    ``carry`` first (as the task's keyword arguments), so nothing goes out twice."""

    def __init__(self, outcomes: list[tuple[str, str, str | None]]):
        super().__init__("delivery outcomes could not be recorded")
        self.carry = {"outcomes": outcomes}
