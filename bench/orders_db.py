"""What the database says about the orders of a scenario: counts, rates, latencies, drain, checks.

The bench is an observer: it reads every schema's tables directly (read-only),
which no service of the system would do.
"""
from __future__ import annotations

import time
from datetime import datetime

from bench.pg import PgClient

TERMINAL = ("fulfilled", "rejected", "cancelled")
OUTBOX_SCHEMAS = ("users", "orders", "inventory")
INBOX_SCHEMAS = ("orders", "inventory", "notifications")


def db_now(db: PgClient) -> datetime:
    return db.fetchval("SELECT clock_timestamp()")


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def latency_summary(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": _r(_pct(ms, 0.50)),
        "p90_ms": _r(_pct(ms, 0.90)),
        "p99_ms": _r(_pct(ms, 0.99)),
        "max_ms": _r(max(ms) if ms else None),
        "mean_ms": _r(sum(ms) / len(ms) if ms else None),
    }


def _r(x):
    return None if x is None else round(x, 1)


def placed_between(db: PgClient, t0, t1, users: list[str]) -> dict:
    rows = db.fetch(
        "SELECT status, count(*) AS n FROM orders.orders "
        "WHERE created_at >= $1 AND created_at < $2 AND user_id = ANY($3::uuid[]) GROUP BY status",
        t0, t1, users,
    )
    by_status = {r["status"]: r["n"] for r in rows}
    return {"accepted": sum(by_status.values()), "by_status": by_status}


def order_timelines(db: PgClient, t0, t1, users: list[str]) -> list[dict]:
    """Per order placed in [t0, t1): created, fulfilled and last-notification-sent times.

    ``done`` is when nothing is left for the order: fulfilled and every
    notification of its events sent (what "notifications included" asks for).
    """
    orders = db.fetch(
        "SELECT o.id, o.status, o.created_at, h.at AS fulfilled_at FROM orders.orders o "
        "LEFT JOIN orders.order_history h ON h.order_id = o.id AND h.status = 'fulfilled' "
        "WHERE o.created_at >= $1 AND o.created_at < $2 AND o.user_id = ANY($3::uuid[])",
        t0, t1, users,
    )
    mails = {r["id"]: r for r in db.fetch(
        "SELECT o.id, max(n.sent_at) AS last_sent, count(*) AS notifications, "
        "count(*) FILTER (WHERE n.status <> 'sent') AS not_sent "
        "FROM orders.orders o JOIN orders.outbox ob ON ob.aggregate_id = o.id "
        "JOIN notifications.notifications n ON n.event_id = ob.id "
        "WHERE o.created_at >= $1 AND o.created_at < $2 AND o.user_id = ANY($3::uuid[]) GROUP BY o.id",
        t0, t1, users,
    )}
    out = []
    for o in orders:
        m = mails.get(o["id"])
        last_sent = m["last_sent"] if m else None
        done = None
        if o["fulfilled_at"] is not None and (m is None or not m["not_sent"]):
            done = max(o["fulfilled_at"], last_sent) if last_sent else o["fulfilled_at"]
        out.append({"status": o["status"], "created": o["created_at"], "fulfilled": o["fulfilled_at"],
                    "last_sent": last_sent, "done": done, "notifications": m["notifications"] if m else 0})
    return out


def pipeline_window(db: PgClient, t0, t1, users: list[str], *, trim_s: float) -> dict:
    """Rates over [t0 + trim, t1] and latencies of every order placed in [t0, t1] (read after the drain).

    accepted/s counts orders created in the window; fulfilled/s orders whose
    'fulfilled' history row falls in it; done/s orders whose last step (fulfilment
    or the last notification sent) does. A growing backlog shows as the latter
    trailing the first: sustained = both within 5% of accepted/s.
    """
    w0 = db.fetchval("SELECT $1::timestamptz + make_interval(secs => $2)", t0, float(trim_s))
    seconds = (t1 - w0).total_seconds()
    lines = order_timelines(db, t0, t1, users)
    inside = lambda t: t is not None and w0 <= t < t1
    accepted = sum(1 for o in lines if inside(o["created"]))
    fulfilled = sum(1 for o in lines if inside(o["fulfilled"]))
    done = sum(1 for o in lines if inside(o["done"]))
    statuses: dict[str, int] = {}
    for o in lines:
        statuses[o["status"]] = statuses.get(o["status"], 0) + 1
    rate = (lambda n: n / seconds if seconds > 0 else 0.0)
    gap = (lambda n: round((accepted - n) / accepted, 4) if accepted else None)
    gaps = (gap(fulfilled), gap(done))
    return {
        "window_s": round(seconds, 2),
        "trim_s": trim_s,
        "accepted": accepted,
        "fulfilled": fulfilled,
        "done": done,
        "accepted_per_s": round(rate(accepted), 1),
        "fulfilled_per_s": round(rate(fulfilled), 1),
        "done_per_s": round(rate(done), 1),
        "backlog_gap": gaps[0],
        "done_gap": gaps[1],
        "sustained": all(g is not None and abs(g) <= 0.05 for g in gaps),
        "orders_placed": len(lines),
        "final_status": statuses,
        "placement_to_fulfilled": latency_summary(
            [(o["fulfilled"] - o["created"]).total_seconds() for o in lines if o["fulfilled"]]),
        "placement_to_last_notification": latency_summary(
            [(o["last_sent"] - o["created"]).total_seconds() for o in lines if o["last_sent"]]),
        "placement_to_done": latency_summary(
            [(o["done"] - o["created"]).total_seconds() for o in lines if o["done"]]),
        "notifications_per_order": round(sum(o["notifications"] for o in lines) / len(lines), 2) if lines else None,
    }


def inbox_between(db: PgClient, t0, t1) -> dict:
    """Messages consumed (inbox rows) per consumer in [t0, t1]: the hops actually taken."""
    out = {}
    for schema in INBOX_SCHEMAS:
        for r in db.fetch(f"SELECT consumer, count(*) AS n FROM {schema}.inbox "
                          "WHERE received_at >= $1 AND received_at < $2 GROUP BY consumer", t0, t1):
            out[r["consumer"]] = out.get(r["consumer"], 0) + r["n"]
    return out


def in_flight(db: PgClient, since) -> dict:
    row = db.fetchrow(
        "SELECT (SELECT count(*) FROM orders.orders WHERE created_at >= $1 "
        "        AND status NOT IN ('fulfilled', 'rejected', 'cancelled')) AS orders, "
        "       (SELECT count(*) FROM inventory.reservations WHERE status = 'held') AS held, "
        "       (SELECT count(*) FROM notifications.notifications WHERE status = 'pending') AS notifications, "
        "       (SELECT count(*) FROM orders.outbox WHERE published_at IS NULL) "
        "     + (SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL) "
        "     + (SELECT count(*) FROM users.outbox WHERE published_at IS NULL) AS outbox",
        since,
    )
    return dict(row)


def drain(db: PgClient, since, *, timeout: float, stall: float = 60.0, log=print,
          alive=lambda: True) -> dict:
    """Wait until every order since ``since`` is terminal, nothing is held or pending."""
    started = time.monotonic()
    last, last_change = None, started
    state = in_flight(db, since)
    while any(state.values()):
        now = time.monotonic()
        if state != last:
            last, last_change = state, now
        if now - started > timeout or now - last_change > stall or not alive():
            return {"drained": False, "seconds": round(now - started, 1), "left": state}
        time.sleep(0.5)
        state = in_flight(db, since)
    return {"drained": True, "seconds": round(time.monotonic() - started, 1), "left": state}


def drain_rate(db: PgClient, t0, t1, users: list[str], *, started) -> dict:
    """How fast the workers worked off the backlog of orders placed in [t0, t1).

    The clock starts at the first reservation after the workers were started
    (``started``): their own start-up is not the pipeline's throughput.
    """
    lines = [o for o in order_timelines(db, t0, t1, users) if o["fulfilled"]]
    first = db.fetchval("SELECT min(created_at) FROM inventory.reservations WHERE created_at >= $1", started)
    if not lines or first is None:
        return {"fulfilled": len(lines), "seconds": None, "fulfilled_per_s": None, "done_per_s": None}
    last_fulfilled = max(o["fulfilled"] for o in lines)
    done = [o["done"] for o in lines if o["done"]]
    to_f = (last_fulfilled - first).total_seconds()
    to_d = (max(done) - first).total_seconds() if done else None
    return {
        "fulfilled": len(lines),
        "seconds": round(to_f, 2),
        "fulfilled_per_s": round(len(lines) / to_f, 1) if to_f > 0 else None,
        "done_seconds": None if to_d is None else round(to_d, 2),
        "done_per_s": round(len(done) / to_d, 1) if to_d else None,
    }


def correctness(db: PgClient, since) -> dict:
    products = db.fetch(
        "SELECT p.id, p.sku, p.on_hand, p.reserved, "
        "  (SELECT coalesce(sum(delta), 0) FROM inventory.stock_movements m "
        "   WHERE m.product_id = p.id AND m.order_id IS NULL) AS stocked "
        "FROM inventory.products p"
    )
    sold = {r["product_id"]: r["q"] for r in db.fetch(
        "SELECT l.product_id, sum(l.quantity) AS q FROM orders.order_lines l "
        "JOIN orders.orders o ON o.id = l.order_id WHERE o.status = 'fulfilled' GROUP BY l.product_id")}
    mismatched = [
        {"sku": p["sku"], "stocked": p["stocked"], "on_hand": p["on_hand"], "fulfilled": int(sold.get(p["id"], 0))}
        for p in products if p["stocked"] != p["on_hand"] + int(sold.get(p["id"], 0))
    ]
    reserved = sum(p["reserved"] for p in products)
    statuses = {r["status"]: r["n"] for r in db.fetch(
        "SELECT status, count(*) AS n FROM orders.orders WHERE created_at >= $1 GROUP BY status", since)}
    non_terminal = sum(n for s, n in statuses.items() if s not in TERMINAL)
    dead = db.fetch("SELECT task_name, error, count(*) AS n FROM public.dead_letters "
                    "WHERE redriven_at IS NULL AND created_at >= $1 GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10", since)
    unpublished = {s: db.fetchval(f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL")
                   for s in OUTBOX_SCHEMAS}
    notes = {r["status"]: r["n"] for r in db.fetch(
        "SELECT status, count(*) AS n FROM notifications.notifications WHERE created_at >= $1 GROUP BY status",
        since)}
    email_sent = db.fetchval("SELECT count(*) FROM notifications.notifications WHERE created_at >= $1 "
                             "AND channel = 'email' AND status = 'sent'", since)
    checks = {
        "stock_conserved": {"pass": not mismatched, "products": len(products), "mismatched": mismatched[:10]},
        "nothing_reserved": {"pass": reserved == 0, "reserved_units": reserved},
        "every_order_terminal": {"pass": non_terminal == 0, "by_status": statuses, "non_terminal": non_terminal},
        "no_dead_letters": {"pass": not dead, "open": sum(r["n"] for r in dead),
                            "examples": [{"task": r["task_name"], "error": r["error"][:200], "n": r["n"]} for r in dead]},
        "outbox_published": {"pass": not any(unpublished.values()), "unpublished": unpublished},
        "notifications_sent": {"pass": not notes.get("pending") and not notes.get("failed"), "by_status": notes,
                               "emails_sent": email_sent},
    }
    return checks
