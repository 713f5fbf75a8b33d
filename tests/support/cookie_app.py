"""A real upstream that misbehaves with cookies and caching, for the cookie-hardening tests.

- ``/plant?line=<Set-Cookie value>``: answers with that ``Set-Cookie`` line exactly as given — how an app
  (or an attacker who controls one page of it) tries to plant a cookie in the user's browser;
- ``/public``: a page the app marks ``Cache-Control: public, max-age=3600`` (and CDN-only fields), such as a
  static-looking page behind the proxy that a shared cache would keep;
- anything else: an HTML page titled ``echo`` showing who the proxy said the user is (``#user``), and its
  ``Cookie`` header (``#cookie``), as ``tests/support/echo.py``'s ``/html`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import aiohttp
from aiohttp import web

from tests.support.browserless import login_via_http

PUBLIC_HEADERS = {"Cache-Control": "public, max-age=3600", "CDN-Cache-Control": "max-age=600"}


@dataclass
class CookieApp:
    url: str
    runner: web.AppRunner
    seen: list[dict[str, str]] = field(default_factory=list)

    async def close(self) -> None:
        await self.runner.cleanup()


def _page(request: web.Request) -> str:
    user, cookie = request.headers.get("X-Forwarded-User", ""), request.headers.get("Cookie", "")
    return (f"<!doctype html><title>echo</title><pre id=user>{escape(user)}</pre>"
            f"<pre id=cookie>{escape(cookie)}</pre>")


async def start_cookie_app(port: int) -> CookieApp:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "user": request.headers.get("X-Forwarded-User", ""),
                     "cookie": request.headers.get("Cookie", "")})
        headers: dict[str, str] = {}
        if request.path == "/plant":
            headers["Set-Cookie"] = request.query["line"]
        elif request.path == "/public":
            headers.update(PUBLIC_HEADERS)
        return web.Response(text=_page(request), content_type="text/html", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return CookieApp(url=f"http://127.0.0.1:{port}", runner=runner, seen=seen)


async def session_cookie_for(proxy_url: str, username: str, name: str = "_authproxy") -> str:
    """Sign ``username`` in through the proxy with a fresh cookie jar (no browser); its session cookie's value."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        result = await login_via_http(browser, proxy_url + "/", username=username)
        assert result.status == 200, result.body_text[:300]
        return next(c.value for c in browser.cookie_jar if c.key == name)
