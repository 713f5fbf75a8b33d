"""An app that plants a second session cookie, seen through a real browser (issue 13).

The app answers ``Set-Cookie: pref=dark _authproxy=<mallory's session> "; Path=/``. Chromium stores that as one
cookie named ``pref`` and sends ``_authproxy=<alice>; pref=dark _authproxy=<mallory> "`` from then on; a proxy
that ends a cookie pair at whitespace (and lets the last duplicate win) forwarded alice as mallory. Here the
proxy must drop the line, and must read alice even when such a cookie reached the browser another way
(a script on the page).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page

from tests.e2e.test_browser_login import sign_in
from tests.support.cookie_app import CookieApp, session_cookie_for, start_cookie_app
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
async def cookie_app() -> AsyncIterator[CookieApp]:
    app = await start_cookie_app(free_port())
    yield app
    await app.close()


async def shown(page: Page) -> tuple[str, str]:
    """(user, Cookie header) as the app saw them, from its page."""
    assert await page.title() == "echo", await page.content()
    return await page.locator("#user").inner_text(), await page.locator("#cookie").inner_text()


async def test_an_app_cannot_switch_the_browser_to_another_user(stack_factory, cookie_app, context, page):
    stack = await stack_factory(upstreams=[{"path": "/", "url": cookie_app.url}])
    mallory = await session_cookie_for(stack.url, "mallory")
    await page.goto(stack.url + "/page")
    await sign_in(page, stack.idp.issuer, "alice")
    assert (await shown(page))[0] == "alice"

    await page.goto(f"{stack.url}/plant?line=pref%3Ddark%20_authproxy%3D{mallory}%20%22%3B%20Path%3D%2F")
    assert not [c for c in await context.cookies(stack.url) if c["name"] == "pref"], "the planted cookie was stored"
    await page.goto(stack.url + "/page")
    assert (await shown(page))[0] == "alice"

    # The same cookie written by a script on the page: chromium sends it, the proxy still reads alice.
    await page.evaluate("value => { document.cookie = value }", f'pref=dark _authproxy={mallory} "; path=/')
    await page.goto(stack.url + "/page")
    user, cookie = await shown(page)
    assert f"_authproxy={mallory}" in cookie, f"chromium did not send the planted cookie: {cookie[:120]}"
    assert user == "alice"
