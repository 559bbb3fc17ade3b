"""Jinja2 templates in the repository, one per event and channel; escaping on by default."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.notifications.transports import header_text

FOLDER = Path(__file__).resolve().parent / "templates"

# Which template each event renders. order.reserved comes only with a fulfilment delay;
# without one, order_fulfilled also says the order is confirmed (its event's
# ``includes_confirmation``), so the customer gets one mail for the one step.
BY_EVENT = {
    "user.registered": "welcome",
    "order.reserved": "order_confirmed",
    "order.fulfilled": "order_fulfilled",
    "order.rejected": "order_rejected",
    "order.cancelled": "order_cancelled",
}

REASONS = {
    "out_of_stock": "some items are out of stock",
    "product_unavailable": "some items are no longer available",
    "customer": "at your request",
    "expired": "the reservation expired before fulfilment",
}


def money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency}"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(FOLDER),
        # HTML is escaped; plain text and subjects are not HTML and must not be.
        autoescape=select_autoescape(disabled_extensions=("txt", "subject"), default=True),
        undefined=StrictUndefined,
        keep_trailing_newline=False,
    )
    env.globals.update(money=money, reasons=REASONS)
    return env


def render(template: str, channel: str, context: dict) -> dict:
    env = environment()
    if channel == "email":
        return {
            # A subject is one header line, whatever a name in it holds.
            "subject": header_text(env.get_template(f"{template}.email.subject").render(context)),
            "body_text": env.get_template(f"{template}.email.txt").render(context),
            "body_html": env.get_template(f"{template}.email.html").render(context),
        }
    return {"subject": None, "body_text": env.get_template(f"{template}.sms.txt").render(context).strip(),
            "body_html": None}
