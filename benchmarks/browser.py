"""Debian's Chromium, headless, driven by Playwright: what the report's tests, its benchmark and the
README screenshot open pages with. Playwright is given the system browser, so it downloads none; the
flags keep Chromium off the network (this machine has only loopback) and out of its sandbox (CI runs
as root)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from echodeploy.errors import EchodeployError

CHROMIUM = Path(os.environ.get("ECHODEPLOY_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def chromium():
    """A headless Chromium browser (Playwright's Browser), closed on leaving the block."""
    if not CHROMIUM.is_file():
        raise EchodeployError(f"no Chromium at {CHROMIUM}: `make test` installs Debian's (apt-get install chromium), "
                              "or set ECHODEPLOY_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise EchodeployError("opening pages needs Playwright: pip install 'echodeploy[test]'") from exc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, path: Path, width: int = 1200, height: int = 900):
    """(page, problems): `path` loaded in a new page; problems lists console errors, script errors and
    every request that left the file (an offline page makes none)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("request", lambda request: problems.append(f"request {request.url}")
            if not request.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(Path(path).resolve().as_uri(), wait_until="load")
    return page, problems
