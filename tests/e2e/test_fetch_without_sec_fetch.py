"""A ``fetch()`` from a page on a plain-http host that is not localhost (issue 18).

Browsers send ``Sec-Fetch-*`` headers only to potentially trustworthy origins (https, localhost,
127.0.0.1). From ``http://app.test`` a ``fetch()`` carries none, and its default ``Accept`` is ``*/*``:
the proxy took it for a page load and redirected it to the provider, where the fetch died on CORS
("Failed to fetch") and the page never saw the 401 with ``login_url``. A navigation always names
``text/html`` in ``Accept``; ``*/*`` alone counts only when the browser says ``Sec-Fetch-Mode: navigate``.

The browser resolves ``app.test`` to 127.0.0.1 (a host-resolver rule) and reaches nothing else.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from playwright.async_api import Browser, Route, async_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, STEP_TIMEOUT_MS
from tests.support.served import served

pytestmark = pytest.mark.e2e

HOST = "app.test"
PAGE = """<!doctype html><meta charset="utf-8"><title>fetch</title><pre id="out"></pre>
<script>
fetch("/data").then(async (resp) => {
  let body = null;
  try { body = await resp.json(); } catch (e) {}
  document.getElementById("out").textContent = JSON.stringify({status: resp.status, body: body});
}, (err) => { document.getElementById("out").textContent = JSON.stringify({error: String(err)}); });
</script>
"""


@pytest.fixture
async def app_url() -> AsyncIterator[str]:
    seen: list[dict[str, str]] = []

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def data(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/app", page)
    app.router.add_get("/data", data)
    async with served(app) as url:
        yield url


@pytest.fixture
async def plain_http_browser() -> AsyncIterator[Browser]:
    args = [a for a in CHROMIUM_ARGS if not a.startswith("--host-resolver-rules")]
    args.append(f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def _only_ours(route: Route) -> None:
    if urlsplit(route.request.url).hostname in (HOST, "127.0.0.1"):
        await route.continue_()
    else:
        await route.abort("blockedbyclient")


async def test_a_fetch_from_a_plain_http_page_gets_the_401_not_a_redirect(stack_factory, app_url,
                                                                          plain_http_browser):
    stack = await stack_factory(upstreams=[{"path": "/", "url": app_url}], skip_auth=[{"path": "^/app$"}])
    port = urlsplit(stack.url).port
    context = await plain_http_browser.new_context()
    context.set_default_timeout(STEP_TIMEOUT_MS)
    await context.route("**/*", _only_ours)
    try:
        page = await context.new_page()
        async with page.expect_request(f"http://{HOST}:{port}/data") as asked:
            await page.goto(f"http://{HOST}:{port}/app")
        request = await asked.value
        # The premise: this browser sends no Sec-Fetch-* from a plain-http, non-local origin.
        headers = await request.all_headers()
        assert not any(name.startswith("sec-fetch-") for name in headers), headers
        assert headers.get("accept") == "*/*"
        out = page.locator("#out")
        await out.filter(has_text="status").or_(out.filter(has_text="error")).wait_for()
        result = json.loads(await out.text_content() or "{}")
        assert result.get("status") == 401, result           # before the fix: {"error": "TypeError: Failed to fetch"}
        assert result["body"]["login_url"].startswith(stack.url + "/oauth2/start?rd=")
    finally:
        await context.close()
