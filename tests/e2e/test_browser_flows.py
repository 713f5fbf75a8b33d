"""Login and redirect flows as chromium really runs them: long deep links, redirect targets, two tabs.

What plain HTTP cannot show here is the browser's own rules: chromium silently drops a cookie whose name
and value exceed 4096 bytes, resolves a ``Location`` with its own URL parser (GURL), and keeps one cookie
jar for every tab.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.async_api import BrowserContext, Page

from proxy.login import MAX_REDIRECT_LENGTH
from tests.e2e.test_browser_login import _on_login_form, echo_page, sign_in
from tests.support.echo import header_values

pytestmark = pytest.mark.e2e


async def sign_in_if_asked(page: Page, issuer: str, username: str = "alice") -> None:
    """Answer the provider's forms if it shows any: with a provider session it asks only for consent."""
    if not _on_login_form(page, issuer):
        return
    if await page.locator("input[name=login]").count():
        await sign_in(page, issuer, username)
        return
    await page.get_by_role("button", name="Continue").click()          # consent only: the login is remembered
    await page.wait_for_url(lambda url: not url.startswith(issuer))


async def drop_proxy_cookies(context: BrowserContext) -> None:
    await context.clear_cookies(name=re.compile(r"^_authproxy"))


async def test_a_deep_link_too_long_for_the_login_cookie_still_signs_in(stack, context, page):
    """A target longer than MAX_REDIRECT_LENGTH would make the login cookie exceed 4096 bytes, which
    chromium drops without a word: the callback then finds no login and the sign-in can never complete.
    It falls back to the start page instead; a target within the limit comes back exactly."""
    too_long = stack.url + "/html/long?q=" + "a" * 2600
    await page.goto(too_long)
    await sign_in_if_asked(page, stack.idp.issuer)
    assert page.url == stack.url + "/", page.url
    record = json.loads(await page.locator("body").inner_text())       # the echo answers "/" in JSON
    assert record["path"] == "/" and header_values(record, "X-Forwarded-User") == ["alice"]

    await drop_proxy_cookies(context)
    longest = stack.url + "/html/long?q="
    longest += "b" * (MAX_REDIRECT_LENGTH - len(longest))
    await page.goto(longest)
    await sign_in_if_asked(page, stack.idp.issuer)
    assert page.url == longest
    assert await echo_page(page) == ("alice", longest.removeprefix(stack.url))
