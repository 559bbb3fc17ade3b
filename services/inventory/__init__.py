"""Inventory domain: catalog, stock ledger, reservations."""
