"""The gateway's routing table: which prefix goes to which service, its operations, what is public.

Each route lists the operations of the public API (api.md) under its prefix, so the
gateway answers a method the path does not have with 405 and ``Allow`` before it
asks for a token, the way the service itself would. Every operation needs a valid
access token unless it is marked public. A path no operation matches is still
forwarded (with a token) and the service answers for it. The services check tokens
again themselves; this check only stops bad requests early. Paths reach this module
already in their one canonical spelling (``app/guard.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ID = "[^/]+"  # the service answers 404 for an id that is not a UUID


@dataclass(frozen=True)
class Operation:
    method: str
    pattern: str  # a regular expression the whole path must match
    public: bool = False


@dataclass(frozen=True)
class Route:
    prefix: str
    service: str
    operations: tuple[Operation, ...] = ()

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def _operations(self, path: str) -> list[Operation]:
        return [op for op in self.operations if re.fullmatch(op.pattern, path)]

    def allowed_methods(self, path: str) -> set[str]:
        """What ``Allow`` lists for ``path`` (HEAD with GET, OPTIONS always, like Flask); empty if unknown."""
        methods = {op.method for op in self._operations(path)}
        if not methods:
            return set()
        return methods | {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())

    def is_public(self, method: str, path: str) -> bool:
        method = "GET" if method == "HEAD" else method
        return any(op.public and op.method == method for op in self._operations(path))


def _ops(pattern: str, *methods: str, public: tuple[str, ...] = ()) -> tuple[Operation, ...]:
    return tuple(Operation(m, pattern, public=m in public) for m in methods)


ROUTES: tuple[Route, ...] = (
    # /api/auth/refresh carries a refresh token, which the users service verifies.
    Route("/api/auth", "users", (
        *_ops("/api/auth/login", "POST", public=("POST",)),
        *_ops("/api/auth/refresh", "POST", public=("POST",)),
        *_ops("/api/auth/logout", "POST"),
        *_ops("/api/auth/logout-all", "POST"),
    )),
    Route("/api/users", "users", (
        *_ops("/api/users", "POST", public=("POST",)),
        *_ops("/api/users/me", "GET", "PATCH"),
    )),
    Route("/api/orders", "orders", (
        *_ops("/api/orders", "GET", "POST"),
        *_ops("/api/orders/search", "GET"),
        *_ops(f"/api/orders/{_ID}", "GET"),
        *_ops(f"/api/orders/{_ID}/cancel", "POST"),
    )),
    Route("/api/inventory", "inventory", (
        *_ops("/api/inventory/products", "GET", "POST", public=("GET",)),
        *_ops(f"/api/inventory/products/{_ID}", "GET", "PATCH", public=("GET",)),
        *_ops(f"/api/inventory/products/{_ID}/stock", "POST"),
        *_ops(f"/api/inventory/products/{_ID}/movements", "GET"),
    )),
    Route("/api/notifications", "notifications", (
        *_ops("/api/notifications", "GET"),
    )),
)


# The gateway's own operations (app/gateway/views.py): answered here, never forwarded. Listed so
# that another method on their paths is a 405 with Allow, as on every other path of the API.
OWN_ROUTES: tuple[Route, ...] = (
    Route("/api/services", "gateway", _ops("/api/services", "GET")),
    Route("/api/dead-letters", "gateway", (
        *_ops("/api/dead-letters", "GET"),
        *_ops("/api/dead-letters/redrive", "POST"),
        *_ops(f"/api/dead-letters/{_ID}/redrive", "POST"),
    )),
)


def is_api(path: str) -> bool:
    """Under /api: the public API's. Every other path but the operations paths (/health, /ready,
    /metrics) is the web console's (app/web), which the gateway forwards as it is."""
    return path == "/api" or path.startswith("/api/")


def resolve(path: str) -> Route | None:
    for route in ROUTES:
        if route.matches(path):
            return route
    return None


def resolve_own(path: str) -> Route | None:
    for route in OWN_ROUTES:
        if route.allowed_methods(path):
            return route
    return None
