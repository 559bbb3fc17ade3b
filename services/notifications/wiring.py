"""What the platform needs from the notifications domain: its consumers, sweep, figures
and the kept transports to close at process stop."""
from infra.wiring import Consumer, Domain, Figure, Periodic
from services.notifications import repository, service, templates

domain = Domain(
    name="notifications",
    consumers=(
        # Every event with a template (templates.BY_EVENT) is told to its customer.
        Consumer("notifications.notify", tuple(templates.BY_EVENT), service.notify),
        Consumer("notifications.remember_recipient", ("user.updated",), service.remember_recipient),
    ),
    periodic=(
        Periodic("notifications.redeliver", service.redeliver_stale, every=lambda s: s.reconcile_seconds),
    ),
    figures=(
        Figure("notifications", "Notifications by channel and status", ("channel", "status"),
               repository.count_by_channel),
    ),
    close=service.close_transports,
)
