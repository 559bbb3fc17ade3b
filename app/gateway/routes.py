"""The gateway's routing table: which prefix goes to which service, and what is public.

Every route needs a valid access token unless a (method, path) pattern below says
it is public. The services check tokens again themselves; this check only stops
bad requests early.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    prefix: str
    service: str
    public: tuple[tuple[str, str], ...] = ()

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def is_public(self, method: str, path: str) -> bool:
        return any(m == method and re.fullmatch(p, path) for m, p in self.public)


ROUTES: tuple[Route, ...] = (
    # /api/auth/refresh carries a refresh token, which the users service verifies.
    Route("/api/auth", "users", public=(("POST", r"/api/auth/login"), ("POST", r"/api/auth/refresh"))),
    Route("/api/users", "users", public=(("POST", r"/api/users/?"),)),
    Route("/api/orders", "orders"),
    Route(
        "/api/inventory",
        "inventory",
        public=(("GET", r"/api/inventory/products/?"), ("GET", r"/api/inventory/products/[^/]+/?")),
    ),
    Route("/api/notifications", "notifications"),
)


def resolve(path: str) -> Route | None:
    for route in ROUTES:
        if route.matches(path):
            return route
    return None
