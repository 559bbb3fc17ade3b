"""Events the inventory domain emits, and the reasons it gives."""
RESERVED = "inventory.reserved"
REJECTED = "inventory.rejected"
RELEASED = "inventory.released"
COMMITTED = "inventory.committed"

OUT_OF_STOCK = "out_of_stock"
PRODUCT_UNAVAILABLE = "product_unavailable"
