"""Debian's chromium driven by Playwright, for the tests that need a real browser: the
executable path is given (Playwright's own browser download is not used), and `make test`
installs the package; a test fails, never skips, without it."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--disable-default-apps", "--disable-extensions"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots of the last pages (ignored by git)


@pytest.fixture(scope="module")
def browser():
    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: apt-get install chromium (make test does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def offline_page(browser, *, width: int = 1280, height: int = 900, screenshot: str | None = None):
    """A page of a new browser context from which no request leaves the machine (what a machine
    without internet would do, and a request our pages must not make). When the block ends
    without error its last page is saved as ``ARTIFACTS/<screenshot>``; then no request was
    refused, no script raised, and nothing was logged as an error (a CSP refusal is one)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    refused_hosts, console_errors, page_errors = [], [], []

    def only_local(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            refused_hosts.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        yield page
        if screenshot:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
            print(f"screenshot: {ARTIFACTS / screenshot}")
    finally:
        context.close()
    assert not refused_hosts, refused_hosts
    assert not page_errors, page_errors
    assert not console_errors, console_errors
