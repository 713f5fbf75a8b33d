"""A real browser for the end-to-end tests: Debian's chromium, driven through Playwright's async API.

The servers are the integration stack (the real oidc-provider, the echo upstream, authproxy in-process), whose
fixtures are imported below so pytest registers them here too.

Why one browser per test rather than per module: the stack's fixtures run on pytest-asyncio's function-scoped
event loop, and a Playwright connection is bound to the loop that opened it. A module-scoped browser would live
on a module loop the stack's servers never run on (tried: the first request hangs). Launching chromium costs
about half a second, so the module keeps its tests few.

The browser talks to 127.0.0.1 only: oidc-provider's pages `@import` a web font from fonts.googleapis.com,
which the context's route handler refuses, and the host-resolver rule makes every other name unresolvable even
for chromium's own background traffic.
"""

from __future__ import annotations

import os

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright

from tests.integration.conftest import browser_session, stack, stack_factory  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
# Milliseconds any one Playwright step (a navigation, a click, a wait) may take: a login is a few local hops,
# so anything slower is a hang worth failing on quickly, well inside the suite's 300 s timeout.
STEP_TIMEOUT_MS = 10_000
LOOPBACK = "127.0.0.1"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        # Outside CI a developer may lack chromium; in CI (.ci/run installs it) its absence is a failure.
        missing = f"{CHROMIUM} is not installed (apt-get install chromium)"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


async def _loopback_only(route: Route) -> None:
    if urlsplit(route.request.url).hostname == LOOPBACK:
        await route.continue_()
    else:
        await route.abort("blockedbyclient")


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile: no cookies, no cache, nothing beyond 127.0.0.1."""
    context = await browser.new_context()
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    await context.route("**/*", _loopback_only)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()
