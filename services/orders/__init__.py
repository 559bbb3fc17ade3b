"""Orders domain: placement, the order state machine, history."""
