"""Gateway mode in a real browser: chromium behind Caddy's forward_auth, several hosts on loopback.

The setup of tests/integration/test_ingress.py (Caddy with docs/deployment.md's Caddyfile, authproxy, two echo
apps on ``app.gw.localhost`` and ``wiki.gw.localhost``, sign-in at ``auth.gw.localhost``). chromium resolves
every ``*.localhost`` name to 127.0.0.1 itself (RFC 6761 §6.3); the resolver rule below sends every other name
nowhere, as the other browser tests do.

What only a browser shows: that it follows the 302 Caddy passes on, keeps the session cookie for the parent
domain (``Domain=gw.localhost``) and sends it to the other host, and lands back on the host it started on.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, STEP_TIMEOUT_MS
from tests.e2e.test_browser_login import sign_in
from tests.integration.test_ingress import DOMAIN, Gateway, start_gateway
from tests.support.caddy import CADDY

pytestmark = [pytest.mark.e2e]

# The other browser tests' flags, with *.localhost allowed through the resolver rule as well.
ARGS = [a for a in CHROMIUM_ARGS if not a.startswith("--host-resolver-rules")] + [
    "--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


@pytest.fixture
async def gateway(idp_factory) -> AsyncIterator[Gateway]:
    if not os.path.exists(CADDY):
        (pytest.fail if os.environ.get("CI") else pytest.skip)("caddy is not installed (apt-get install caddy)")
    gw, started = await start_gateway(idp_factory)
    try:
        yield gw
    finally:
        for thing in started:
            await (thing.stop() if hasattr(thing, "stop") else thing.close())


@pytest.fixture
async def gw_browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{CHROMIUM} is not installed")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _loopback_only(route: Route) -> None:
    host = urlsplit(route.request.url).hostname or ""
    if host == "127.0.0.1" or host.endswith(".localhost"):
        await route.continue_()
    else:
        await route.abort("blockedbyclient")


@pytest.fixture
async def page(gw_browser: Browser) -> AsyncIterator[Page]:
    context = await gw_browser.new_context()
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    await context.route("**/*", _loopback_only)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def shown(page: Page) -> dict:
    """The echo app's record, as the browser shows its JSON."""
    return json.loads(await page.locator("body").inner_text())


async def test_sign_in_on_one_host_then_the_other_host_lets_the_user_in(gateway, page):
    start = gateway.url("app", "/docs/page?q=a%20b&x=1")
    await page.goto(start)
    issuer = page.url.split("/interaction/")[0]
    await sign_in(page, issuer)
    assert page.url == start                                 # back on the host it started on, query and all
    record = await shown(page)
    assert record["raw_path"] == "/docs/page?q=a%20b&x=1"
    assert ["X-Auth-Request-User", "alice"] in record["headers"]
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["_authproxy"]["domain"] in (DOMAIN, "." + DOMAIN)     # the parent domain
    assert cookies["_authproxy"]["httpOnly"]

    # The other host: no sign-in, the same user.
    await page.goto(gateway.url("wiki", "/wiki/Home"))
    assert page.url == gateway.url("wiki", "/wiki/Home")
    wiki = await shown(page)
    assert wiki["raw_path"] == "/wiki/Home" and ["X-Auth-Request-User", "alice"] in wiki["headers"]


async def test_a_second_host_visited_first_gets_its_own_way_back(gateway, page):
    """Signing in from the wiki host returns to the wiki, not to the app or public_url."""
    start = gateway.url("wiki", "/wiki/Start?from=link")
    await page.goto(start)
    await sign_in(page, page.url.split("/interaction/")[0], username="bob")
    assert page.url == start
    assert ["X-Auth-Request-User", "bob"] in (await shown(page))["headers"]
    await page.goto(gateway.url("app", "/"))
    assert ["X-Auth-Request-User", "bob"] in (await shown(page))["headers"]
