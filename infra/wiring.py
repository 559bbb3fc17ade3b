"""What a domain declares for the platform, the way a blueprint declares its routes.

Each domain package has a ``wiring.py`` whose ``domain`` says which events it consumes
(each consumer becomes a task ``<domain>.<verb>`` on the domain's queue), what it runs
periodically, which figures it exports as metrics and whether it has an outbox. The
task edge (workers/) and the HTTP edge (app/) read these declarations; the list of
domains is ``services.DOMAINS``. Nothing here imports Flask or Celery.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from config.settings import Settings


@dataclass
class Consumer:
    """Events handled by one task: ``handle(event=..., **carried)`` in its own transaction."""

    task: str
    events: tuple[str, ...]
    handle: Callable[..., Any]
    # Scheduled FULFILMENT_DELAY_SECONDS later (a countdown, never a sleep); with no
    # delay the producer already did the work in its own transaction and this route is off.
    delayed: bool = False


@dataclass(frozen=True)
class Periodic:
    """A beat task: no retries and no dead letters; the next tick runs it again."""

    task: str
    run: Callable[[], Any]
    every: Callable[[Settings], float]


@dataclass(frozen=True)
class Figure:
    """A gauge read from the domain's schema when /metrics is scraped.

    ``read(db)`` is a repository function returning rows with one key per label and ``n``.
    """

    name: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[Any], Awaitable[list[dict]]]


@dataclass(frozen=True)
class Domain:
    name: str  # its schema, its queue and the prefix of its tasks
    consumers: tuple[Consumer, ...] = ()
    periodic: tuple[Periodic, ...] = ()
    figures: tuple[Figure, ...] = ()
    outbox: bool = False  # emits events through an outbox table in its schema
    close: Callable[[], None] | None = None  # at process stop (a kept SMTP session, ...)


@dataclass(frozen=True)
class Route:
    task: str
    queue: str
    delayed: bool = False


def routes(domains: list[Domain]) -> dict[str, tuple[Route, ...]]:
    """Every consumer of every event, from the domains' declarations."""
    out: dict[str, list[Route]] = {}
    for domain in domains:
        for consumer in domain.consumers:
            for event in consumer.events:
                out.setdefault(event, []).append(Route(consumer.task, domain.name, consumer.delayed))
    return {event: tuple(found) for event, found in out.items()}
