"""The service registry (shared table public.service_registry).

Every HTTP instance upserts its row at start and every few seconds (heartbeat) and
deletes it on shutdown; an instance whose heartbeat is older than the TTL is no
longer offered to the gateway, which spreads requests over the rest.
"""
from __future__ import annotations

SCHEMA = "public"


async def heartbeat(db, *, service: str, instance_id: str, url: str) -> None:
    await db.execute(
        "INSERT INTO {{tables.service_registry}} (service, instance_id, url) VALUES ($1, $2, $3) "
        "ON CONFLICT (service, instance_id) DO UPDATE SET url = EXCLUDED.url, heartbeat_at = now()",
        service, instance_id, url,
    )


async def deregister(db, *, service: str, instance_id: str) -> None:
    await db.execute(
        "DELETE FROM {{tables.service_registry}} WHERE service = $1 AND instance_id = $2", service, instance_id
    )


async def live_instances(db, *, ttl_seconds: float) -> list[dict]:
    return await db.fetch_all(
        "SELECT service, instance_id, url FROM {{tables.service_registry}} "
        "WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY service, instance_id",
        float(ttl_seconds),
    )


async def all_instances(db, *, ttl_seconds: float) -> list[dict]:
    return await db.fetch_all(
        "SELECT service, instance_id, url, started_at, heartbeat_at, "
        "extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_seconds, "
        "(heartbeat_at > now() - make_interval(secs => $1)) AS healthy "
        "FROM {{tables.service_registry}} ORDER BY service, instance_id",
        float(ttl_seconds),
    )
