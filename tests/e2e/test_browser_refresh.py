"""A real browser session across several access-token expiries: the proxy refreshes, the browser keeps
the rotated tokens in its cookie, and the app sees a new access token each time."""

from __future__ import annotations

import asyncio
import json

import pytest
from playwright.async_api import Page

from tests.e2e.test_browser_login import sign_in
from tests.support.echo import header_values

pytestmark = pytest.mark.e2e

TTL = 3                     # seconds: the refresh window is half of it


async def bearer_seen(page: Page, url: str) -> str:
    """Navigate to a JSON page of the echo upstream and return the Bearer token it received."""
    response = await page.goto(url)
    assert response is not None and response.status == 200, url
    record = json.loads(await page.locator("body").inner_text())
    [value] = header_values(record, "Authorization")
    return value.removeprefix("Bearer ")


async def test_browser_session_survives_several_expiries(stack_factory, page):
    stack = await stack_factory(idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True})
    await page.goto(stack.url + "/json/start")
    await sign_in(page, stack.idp.issuer)
    await page.wait_for_url(stack.url + "/json/start")
    tokens = [await bearer_seen(page, stack.url + "/json/0")]
    for i in range(1, 4):
        await asyncio.sleep(TTL / 2 + 0.3)
        tokens.append(await bearer_seen(page, stack.url + f"/json/{i}"))
    assert len(set(tokens)) == 4, "the app should see a new access token after each expiry"
    assert stack.idp.count_grants("refresh_token") == 3
    assert stack.idp.count_grants("refresh_token", ok=False) == 0     # never a spent refresh token
    assert page.url == stack.url + "/json/3"                           # no detour through the provider
