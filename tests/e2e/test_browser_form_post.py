"""response_mode form_post in chromium (issue 20): the provider's page auto-submits its form to the callback,
and the Secure, SameSite=None login cookie goes with that POST.

Both servers are on 127.0.0.1, so the POST is same-site here and cannot show a cross-site cookie rule; what it
shows is that a real browser runs the provider's auto-submitting page, keeps a Secure cookie on loopback
(a potentially trustworthy origin), and ends up signed in on the page it asked for.
"""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Page

from tests.e2e.test_browser_login import sign_in

pytestmark = pytest.mark.e2e


async def test_form_post_sign_in_in_a_browser(stack_factory, page: Page):
    stack = await stack_factory(provider={"response_mode": "form_post"}, cookie={"secure": True})
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/oauth2/callback" in r.url
            else None)
    await page.goto(stack.url + "/wanted?x=1")
    await sign_in(page, stack.idp.issuer)
    await page.wait_for_url(stack.url + "/wanted?x=1")
    record = json.loads(await page.locator("body").inner_text())
    assert record["raw_path"] == "/wanted?x=1"
    assert ["X-Forwarded-User", "alice"] in record["headers"]
    assert posts == [stack.url + "/oauth2/callback"]
    cookies = {c["name"]: c for c in await page.context.cookies(stack.url)}
    assert "__Host-authproxy" in cookies and cookies["__Host-authproxy"]["sameSite"] == "Lax"
