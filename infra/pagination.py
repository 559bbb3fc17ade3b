"""Opaque keyset cursors: (created_at, id) of the last row, base64url-encoded.

Ids are UUIDs, or bigints for tables keyed by a sequence (``decode(..., id_type=bigint)``).
"""
from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from infra.errors import ValidationFailed


def encode(created_at: datetime, row_id: uuid.UUID | int) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def bigint(text: str) -> int:
    """A row id of a bigint column, as a cursor carries it."""
    value = int(text)
    if not -(2**63) <= value < 2**63 or text != str(value):
        raise ValueError("not a bigint")
    return value


def decode(cursor: str | None, *, id_type: Callable[[str], Any] = uuid.UUID) -> tuple[datetime, Any] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, row_id = raw.split("|", 1)
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment.astimezone(timezone.utc), id_type(row_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise ValidationFailed("the cursor is not valid", errors={"cursor": ["Not a valid cursor."]}) from None


def page(rows: list[dict], limit: int) -> dict:
    """Rows fetched with limit + 1 -> {"items", "next_cursor"}."""
    items = rows[:limit]
    more = len(rows) > limit
    return {
        "items": items,
        "next_cursor": encode(items[-1]["created_at"], items[-1]["id"]) if more and items else None,
    }


def newest_first(args: list, *, before: tuple | None, limit: int, alias: str = "") -> str:
    """The tail of a newest-first keyset query: condition, order and limit (limit + 1 rows).

    Appends its parameters to ``args``; the caller's WHERE clause comes before it.
    """
    column = f"{alias}." if alias else ""
    tail = ""
    if before:
        args += [before[0], before[1]]
        tail = f" AND ({column}created_at, {column}id) < (${len(args) - 1}, ${len(args)})"
    args.append(limit + 1)
    return tail + f" ORDER BY {column}created_at DESC, {column}id DESC LIMIT ${len(args)}"
