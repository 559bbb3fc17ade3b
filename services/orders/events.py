"""Events the orders domain emits."""
PLACED = "order.placed"
RESERVED = "order.reserved"
REJECTED = "order.rejected"
FULFILLED = "order.fulfilled"
CANCELLED = "order.cancelled"

TERMINAL = ("fulfilled", "rejected", "cancelled")
