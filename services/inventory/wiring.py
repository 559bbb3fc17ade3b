"""What the platform needs from the inventory domain: its consumers and figures."""
from infra.wiring import Consumer, Domain, Figure
from services.inventory import repository, service

domain = Domain(
    name="inventory",
    outbox=True,
    consumers=(
        Consumer("inventory.reserve", ("order.placed",), service.reserve_order),
        Consumer("inventory.commit", ("order.fulfilled",), service.commit_order),
        Consumer("inventory.release", ("order.cancelled",), service.release_order),
    ),
    figures=(
        Figure("reservations", "Reservations by status", ("status",), repository.count_reservations),
    ),
)
