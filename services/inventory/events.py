"""Events the inventory domain emits, and the reasons it gives."""
RESERVED = "inventory.reserved"
REJECTED = "inventory.rejected"
RELEASED = "inventory.released"
COMMITTED = "inventory.committed"
# What orders prices from changed (created, renamed, repriced, (de)activated).
PRODUCT_CHANGED = "inventory.product_changed"

OUT_OF_STOCK = "out_of_stock"
PRODUCT_UNAVAILABLE = "product_unavailable"
