"""Module-level app objects for gunicorn: ``gunicorn app.wsgi:users`` and so on.

Built on first access (PEP 562), so a process builds only the app it serves.
"""
from __future__ import annotations

from functools import lru_cache

from app import create_app
from config.settings import DEFAULT_PORTS


@lru_cache(maxsize=None)
def _app(name: str):
    try:
        return create_app(name)
    except AttributeError as exc:
        # gunicorn would report an AttributeError here as "Failed to find attribute".
        raise RuntimeError(f"building the {name} app failed: {exc!r}") from exc


def __getattr__(name: str):
    if name in DEFAULT_PORTS:
        return _app(name)
    raise AttributeError(name)
