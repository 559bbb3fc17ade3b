"""Events the orders domain emits."""
PLACED = "order.placed"
RESERVED = "order.reserved"
REJECTED = "order.rejected"
FULFILLED = "order.fulfilled"
CANCELLED = "order.cancelled"

# In order.fulfilled's payload, true when the order was reserved and fulfilled in one step
# (no fulfilment delay): that event then also stands for the confirmation, and no
# order.reserved was sent. Absent otherwise.
INCLUDES_CONFIRMATION = "includes_confirmation"

TERMINAL = ("fulfilled", "rejected", "cancelled")
