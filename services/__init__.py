"""The domains: users, orders, inventory, notifications. Never imports Flask or Celery.

``DOMAINS`` is the registration list: each name is a package here whose ``wiring.py``
declares what the platform needs from it (infra/wiring.py).
"""
from __future__ import annotations

from importlib import import_module

DOMAINS = ("users", "orders", "inventory", "notifications")


def wiring() -> list:
    """Every domain's declaration (``services.<name>.wiring.domain``), in DOMAINS order."""
    return [import_module(f"services.{name}.wiring").domain for name in DOMAINS]
