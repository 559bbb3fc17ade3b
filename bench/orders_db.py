"""What the database says about the orders of a run: counts, rates, latencies, backlog, drain, checks.

The bench and the chaos run are observers: they read every schema's tables directly
(read-only), which no service of the system would do.
"""
from __future__ import annotations

import time

from bench.pg import PgClient

TERMINAL = ("fulfilled", "rejected", "cancelled")
OUTBOX_SCHEMAS = ("users", "orders", "inventory")
INBOX_SCHEMAS = ("orders", "inventory", "notifications")
# Customer-visible events that should have produced a sent mail.
UNNOTIFIED = (
    "SELECT count(*) FROM (SELECT id FROM orders.outbox WHERE event_type IN ('order.reserved', 'order.rejected', "
    "'order.fulfilled', 'order.cancelled') UNION ALL "
    "SELECT id FROM users.outbox WHERE event_type = 'user.registered') e "
    "WHERE NOT EXISTS (SELECT 1 FROM notifications.notifications n "
    "WHERE n.event_id = e.id AND n.channel = 'email' AND n.status = 'sent')")


def db_now(db: PgClient):
    return db.fetchval("SELECT clock_timestamp()")


def pct(values: list[float], p: float) -> float | None:
    """The ``p`` quantile (0..1), linear between the closest ranks."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def latency_summary(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    r = lambda x: None if x is None else round(x, 1)  # noqa: E731
    return {"count": len(ms), "p50_ms": r(pct(ms, 0.5)), "p90_ms": r(pct(ms, 0.9)), "p99_ms": r(pct(ms, 0.99)),
            "max_ms": r(max(ms, default=None)), "mean_ms": r(sum(ms) / len(ms) if ms else None)}


def placed_between(db: PgClient, t0, t1, users: list[str]) -> dict:
    by_status = {r["status"]: r["n"] for r in db.fetch(
        "SELECT status, count(*) AS n FROM orders.orders "
        "WHERE created_at >= $1 AND created_at < $2 AND user_id = ANY($3::uuid[]) GROUP BY status", t0, t1, users)}
    return {"accepted": sum(by_status.values()), "by_status": by_status}


def order_timelines(db: PgClient, t0, t1, users: list[str]) -> list[dict]:
    """Per order placed in [t0, t1): created, fulfilled and last-notification-sent times; ``done`` is
    when nothing is left for it: fulfilled and every notification of its events sent."""
    where = "o.created_at >= $1 AND o.created_at < $2 AND o.user_id = ANY($3::uuid[])"
    orders = db.fetch("SELECT o.id, o.status, o.created_at, h.at AS fulfilled_at FROM orders.orders o "
                      "LEFT JOIN orders.order_history h ON h.order_id = o.id AND h.status = 'fulfilled' "
                      f"WHERE {where}", t0, t1, users)
    mails = {r["id"]: r for r in db.fetch(
        "SELECT o.id, max(n.sent_at) AS last_sent, count(*) AS notifications, "
        "count(*) FILTER (WHERE n.status <> 'sent') AS not_sent FROM orders.orders o "
        "JOIN orders.outbox ob ON ob.aggregate_id = o.id JOIN notifications.notifications n ON n.event_id = ob.id "
        f"WHERE {where} GROUP BY o.id", t0, t1, users)}
    out = []
    for o in orders:
        m = mails.get(o["id"]) or {"last_sent": None, "notifications": 0, "not_sent": 0}
        done = None
        if o["fulfilled_at"] is not None and not m["not_sent"]:
            done = max(o["fulfilled_at"], m["last_sent"]) if m["last_sent"] else o["fulfilled_at"]
        out.append({"status": o["status"], "created": o["created_at"], "fulfilled": o["fulfilled_at"],
                    "last_sent": m["last_sent"], "done": done, "notifications": m["notifications"],
                    "not_sent": m["not_sent"]})
    return out


def pipeline_window(db: PgClient, t0, t1, users: list[str], *, trim_s: float) -> dict:
    """Rates over [t0 + trim, t1] and latencies of every order placed in [t0, t1) (read after the drain).

    accepted/s counts orders created in the window; fulfilled/s orders whose 'fulfilled' history row
    falls in it; done/s orders whose last step (fulfilment or the last notification sent) does. A
    growing backlog shows as the latter trailing the first: sustained = both within 5% of accepted/s and
    every notification sent. ``over_time``: per second of creation, orders placed and their latency to
    fulfilled.
    """
    w0 = db.fetchval("SELECT $1::timestamptz + make_interval(secs => $2)", t0, float(trim_s))
    seconds = (t1 - w0).total_seconds()
    lines = order_timelines(db, t0, t1, users)
    count = lambda key: sum(1 for o in lines if o[key] is not None and w0 <= o[key] < t1)  # noqa: E731
    accepted, fulfilled, done = count("created"), count("fulfilled"), count("done")
    rate = lambda n: round(n / seconds if seconds > 0 else 0.0, 1)  # noqa: E731
    gap = lambda n: round((accepted - n) / accepted, 4) if accepted else None  # noqa: E731
    since = lambda key: latency_summary([(o[key] - o["created"]).total_seconds() for o in lines if o[key]])  # noqa
    statuses: dict[str, int] = {}
    buckets: dict[int, list[dict]] = {}
    for o in lines:
        statuses[o["status"]] = statuses.get(o["status"], 0) + 1
        buckets.setdefault(int((o["created"] - t0).total_seconds()), []).append(o)
    unsent = sum(o["not_sent"] for o in lines)
    over_time = [{"t": t, "placed": len(os_), **latency_summary([(o["fulfilled"] - o["created"]).total_seconds()
                                                                  for o in os_ if o["fulfilled"]])}
                 for t, os_ in sorted(buckets.items())]
    return {
        "window_s": round(seconds, 2), "trim_s": trim_s, "accepted": accepted, "fulfilled": fulfilled, "done": done,
        "accepted_per_s": rate(accepted), "fulfilled_per_s": rate(fulfilled), "done_per_s": rate(done),
        "backlog_gap": gap(fulfilled), "done_gap": gap(done), "notifications_not_sent": unsent,
        "sustained": all(g is not None and abs(g) <= 0.05 for g in (gap(fulfilled), gap(done))) and not unsent,
        "orders_placed": len(lines), "final_status": statuses, "over_time": over_time,
        "placement_to_fulfilled": since("fulfilled"), "placement_to_last_notification": since("last_sent"),
        "placement_to_done": since("done"),
        "notifications_per_order": round(sum(o["notifications"] for o in lines) / len(lines), 2) if lines else None,
    }


def drain_rate(db: PgClient, t0, t1, users: list[str], *, started) -> dict:
    """How fast the workers worked off the backlog of orders placed in [t0, t1): the clock starts at
    the first reservation after the workers were started (``started``), not at their start-up."""
    lines = [o for o in order_timelines(db, t0, t1, users) if o["fulfilled"]]
    first = db.fetchval("SELECT min(created_at) FROM inventory.reservations WHERE created_at >= $1", started)
    if not lines or first is None:
        return {"fulfilled": len(lines), "seconds": None, "fulfilled_per_s": None, "done_per_s": None}
    done = [o["done"] for o in lines if o["done"]]
    to_f = (max(o["fulfilled"] for o in lines) - first).total_seconds()
    to_d = (max(done) - first).total_seconds() if done else None
    return {"fulfilled": len(lines), "seconds": round(to_f, 2),
            "fulfilled_per_s": round(len(lines) / to_f, 1) if to_f > 0 else None,
            "done_seconds": None if to_d is None else round(to_d, 2),
            "done_per_s": round(len(done) / to_d, 1) if to_d else None}


def inbox_between(db: PgClient, t0, t1) -> dict:
    """Messages consumed (inbox rows) per consumer in [t0, t1): the hops actually taken. orders.settle_stock
    keeps no inbox row (it sets the order's stock_settled_at, which is idempotent): one per order settled."""
    out: dict[str, int] = {}
    for schema in INBOX_SCHEMAS:
        for r in db.fetch(f"SELECT consumer, count(*) AS n FROM {schema}.inbox "
                          "WHERE received_at >= $1 AND received_at < $2 GROUP BY consumer", t0, t1):
            out[r["consumer"]] = out.get(r["consumer"], 0) + r["n"]
    if settled := db.fetchval("SELECT count(*) FROM orders.orders WHERE stock_settled_at >= $1 "
                              "AND stock_settled_at < $2", t0, t1):
        out["orders.settle_stock"] = out.get("orders.settle_stock", 0) + settled
    return out


def backlog(db: PgClient, since=None, *, mails: bool = False) -> dict:
    """What is left to do for orders created since ``since`` (all without); ``mails``: also the
    customer events without their sent mail (a scan of every outbox: the chaos run's end only)."""
    row = db.fetchrow(
        "SELECT count(*) FILTER (WHERE status NOT IN ('fulfilled', 'rejected', 'cancelled')) AS open, "
        "count(*) FILTER (WHERE status IN ('fulfilled', 'cancelled') AND stock_settled_at IS NULL) AS unsettled, "
        "(SELECT coalesce(sum(reserved), 0) FROM inventory.products) AS reserved, "
        "(SELECT count(*) FROM notifications.notifications WHERE status = 'pending') AS pending, "
        + " + ".join(f"(SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL)" for s in OUTBOX_SCHEMAS)
        + " AS unpublished FROM orders.orders WHERE created_at >= coalesce($1, '-infinity'::timestamptz)", since)
    out = {"orders not terminal": row["open"], "stock effects unconfirmed": row["unsettled"],
           "units reserved": row["reserved"], "notifications pending": row["pending"]}
    if mails:
        out["events without their mail"] = db.fetchval(UNNOTIFIED)
    out["events unpublished"] = row["unpublished"]
    return out


def drain(db: PgClient, since=None, *, timeout: float, stall: float | None = 60.0, interval: float = 0.5,
          alive=lambda: True, mails: bool = False) -> dict:
    """Wait until nothing is left (``backlog``); give up after ``timeout`` s, after ``stall`` s
    without progress, or when ``alive()`` says a process of the system died."""
    started = last_change = time.monotonic()
    state = last = backlog(db, since, mails=mails)
    while any(state.values()):
        now = time.monotonic()
        if state != last:
            last, last_change = state, now
        if now - started > timeout or (stall and now - last_change > stall) or not alive():
            return {"drained": False, "seconds": round(now - started, 1), "left": state}
        time.sleep(interval)
        state = backlog(db, since, mails=mails)
    return {"drained": True, "seconds": round(time.monotonic() - started, 1), "left": state}


def stock(db: PgClient) -> list[dict]:
    """Per product: units stocked (movements without an order), on hand, reserved, and in fulfilled orders."""
    fulfilled = {r["product_id"]: int(r["q"]) for r in db.fetch(
        "SELECT l.product_id, sum(l.quantity) AS q FROM orders.order_lines l "
        "JOIN orders.orders o ON o.id = l.order_id WHERE o.status = 'fulfilled' GROUP BY l.product_id")}
    return [{**p, "fulfilled": fulfilled.get(p["id"], 0)} for p in db.fetch(
        "SELECT p.id, p.sku, p.on_hand, p.reserved, (SELECT coalesce(sum(delta), 0) FROM inventory.stock_movements m "
        "WHERE m.product_id = p.id AND m.order_id IS NULL) AS stocked FROM inventory.products p")]


def correctness(db: PgClient, since) -> dict:
    products = stock(db)
    off = [{k: p[k] for k in ("sku", "stocked", "on_hand", "fulfilled")}
           for p in products if p["stocked"] != p["on_hand"] + p["fulfilled"]]
    reserved = sum(p["reserved"] for p in products)
    by_status = lambda table: {r["status"]: r["n"] for r in db.fetch(  # noqa: E731
        f"SELECT status, count(*) AS n FROM {table} WHERE created_at >= $1 GROUP BY status", since)}
    statuses, notes = by_status("orders.orders"), by_status("notifications.notifications")
    open_ = sum(n for s, n in statuses.items() if s not in TERMINAL)
    dead = db.fetch("SELECT task_name, error, count(*) AS n FROM public.dead_letters "
                    "WHERE redriven_at IS NULL AND created_at >= $1 GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10", since)
    unpublished = {s: db.fetchval(f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL")
                   for s in OUTBOX_SCHEMAS}
    emails = db.fetchval("SELECT count(*) FROM notifications.notifications WHERE created_at >= $1 "
                         "AND channel = 'email' AND status = 'sent'", since)
    return {
        "stock_conserved": {"pass": not off, "products": len(products), "mismatched": off[:10]},
        "nothing_reserved": {"pass": reserved == 0, "reserved_units": reserved},
        "every_order_terminal": {"pass": open_ == 0, "by_status": statuses, "non_terminal": open_},
        "no_dead_letters": {"pass": not dead, "open": sum(r["n"] for r in dead), "examples": [
            {"task": r["task_name"], "error": r["error"][:200], "n": r["n"]} for r in dead]},
        "outbox_published": {"pass": not any(unpublished.values()), "unpublished": unpublished},
        "notifications_sent": {"pass": not notes.get("pending") and not notes.get("failed"), "by_status": notes,
                               "emails_sent": emails},
    }
