"""A single-page app behind the proxy, in a real browser: its session ends, its next fetch gets the 401,
and the page sends the user to ``login_url`` — to the provider and back to the same page.

The upstream is a small aiohttp app made here: ``/app`` is the page, ``/api/me`` the API it calls with
``fetch``. The page does what a front end behind authproxy should do with a 401: read ``login_url``
from the JSON and navigate there. The session "expires" by clearing the browser's cookies (the
provider's too, so its login form shows again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from playwright.async_api import Page

from tests.support.served import served

pytestmark = pytest.mark.e2e

SPA_PAGE = """<!doctype html><meta charset="utf-8"><title>SPA</title>
<h1>SPA</h1><button id="load">Load</button><pre id="out"></pre>
<script>
async function load() {
  const resp = await fetch("/api/me", {headers: {"Accept": "application/json"}});
  const body = await resp.json();
  if (resp.status === 401) { location.href = body.login_url; return; }
  document.getElementById("out").textContent = resp.status + " " + body.user;
}
document.getElementById("load").addEventListener("click", load);
load();
</script>
"""


@pytest.fixture
async def spa_url() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=SPA_PAGE, content_type="text/html")

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"user": request.headers.get("X-Forwarded-User")})

    app = web.Application()
    app.router.add_get("/app", page)
    app.router.add_get("/api/me", me)
    async with served(app) as url:
        yield url


async def sign_in(page: Page, issuer: str, username: str) -> None:
    """Answer the provider's login and consent forms; wait until the browser has left the provider."""
    await page.locator("input[name=login]").fill(username)
    await page.locator("input[name=password]").fill("pw")
    await page.get_by_role("button", name="Sign-in").click()
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(lambda url: not url.startswith(issuer))


async def test_spa_follows_login_url_after_its_session_ends(stack_factory, spa_url, context, page):
    stack = await stack_factory(upstreams=[{"path": "/", "url": spa_url}], api_paths=["/api"])
    issuer, app_url = stack.idp.issuer, stack.url + "/app"
    await page.goto(app_url)
    await sign_in(page, issuer, "carol")
    assert page.url == app_url
    await page.locator("#out", has_text="200 carol").wait_for()

    await context.clear_cookies()                                   # the session is over
    async with page.expect_response(stack.url + "/api/me") as api_answer:
        await page.locator("#load").click()
    assert (await api_answer.value).status == 401
    await page.wait_for_url(lambda url: url.startswith(issuer + "/interaction/"))
    assert await page.locator("input[name=password]").is_visible()   # the provider's login page

    await sign_in(page, issuer, "carol")
    assert page.url == app_url                                       # back on the page, not the API
    await page.locator("#out", has_text="200 carol").wait_for()
