"""What the platform needs from the orders domain: its consumers, sweeps and figures."""
from infra.wiring import Consumer, Domain, Figure, Periodic
from services.orders import repository, service

domain = Domain(
    name="orders",
    outbox=True,
    consumers=(
        Consumer("orders.apply_reservation", ("inventory.reserved", "inventory.rejected"), service.apply_reservation),
        Consumer("orders.fulfil", ("order.reserved",), service.fulfil_order, delayed=True),
        Consumer("orders.settle_stock", ("inventory.committed", "inventory.released"), service.settle_stock),
        Consumer("orders.track_product", ("inventory.product_changed",), service.track_product),
        Consumer("orders.remember_customer", ("user.registered", "user.updated"), service.remember_customer),
    ),
    periodic=(
        Periodic("orders.expire_reservations", service.expire_reservations,
                 every=lambda s: max(1.0, min(30.0, s.reservation_ttl_seconds / 4))),
        # Nothing stranded by a lost message: re-announce what has not settled (README, "Faults").
        Periodic("orders.reconcile", service.reannounce_stranded, every=lambda s: s.reconcile_seconds),
    ),
    figures=(
        Figure("orders", "Orders by status and reason (reason expired: reservations that expired)",
               ("status", "reason"), repository.count_by_status),
    ),
)
