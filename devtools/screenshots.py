"""The README's screenshots of the web console: ``docs/storefront.png`` (the catalog),
``docs/my-orders.png`` (an order fulfilled on "My orders") and ``docs/console.png`` (the
operations console's products screen).

Against a running system (``make run``, seeded with the demo catalog), with Debian's
chromium driven by Playwright (requirements-test.txt):

    ADMIN_EMAIL=... ADMIN_PASSWORD=... .venv/bin/python -m devtools.screenshots \
        [--url http://127.0.0.1:8000] [--out docs]

It registers a new customer, orders two products and waits for the order to be fulfilled
(a worker must run); with ADMIN_EMAIL and ADMIN_PASSWORD (the admin ``make run`` creates)
it signs in as that admin for the console. No request leaves the machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    context.route("**/*", lambda route: route.continue_() if urlsplit(route.request.url).hostname in LOCAL_HOSTS
                  else route.abort("internetdisconnected"))
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def take(url: str, out: Path, admin: tuple[str, str] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = [out / "storefront.png", out / "my-orders.png"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = _page(browser)
        page.goto(url + "/register")
        page.get_by_label("Name").fill("Ada Lovelace")
        page.get_by_label("Email").fill(f"ada-{uuid.uuid4().hex[:8]}@example.com")
        page.get_by_label("Password").fill("correct horse battery")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url(url + "/")
        page.goto(url + "/?in_stock=1")
        page.screenshot(path=str(shots[0]))
        for button in page.get_by_role("button", name=re.compile("^Add .* to cart$")).all()[:2]:
            page.get_by_role("button", name=button.get_attribute("aria-label")).click()
            page.wait_for_load_state()
        page.goto(url + "/checkout")
        page.locator("#place-order").click()
        page.wait_for_url(re.compile(r".*/orders/[0-9a-f-]{36}$"))
        page.get_by_role("link", name="My orders", exact=True).click()
        page.wait_for_selector('[data-status="fulfilled"]', timeout=60_000)
        page.screenshot(path=str(shots[1]))
        if admin:
            shots.append(console(_page(browser), url, out, *admin))
        browser.close()
    return shots


def console(page, url: str, out: Path, email: str, password: str) -> Path:
    """The operations console's products screen, as an admin."""
    shot = out / "console.png"
    page.goto(url + "/login?next=/console/products")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/console/products")
    page.screenshot(path=str(shot))
    return shot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("OMS_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    admin = (os.environ["ADMIN_EMAIL"], os.environ["ADMIN_PASSWORD"]) \
        if os.environ.get("ADMIN_EMAIL") and os.environ.get("ADMIN_PASSWORD") else None
    if admin is None:
        logger.info("ADMIN_EMAIL and ADMIN_PASSWORD are not set: no console screenshot")
    for shot in take(args.url.rstrip("/"), Path(args.out), admin):
        logger.info("wrote %s", shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
