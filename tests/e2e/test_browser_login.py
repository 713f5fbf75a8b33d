"""The login story in a real browser: chromium follows the redirects, keeps the cookies and submits the forms.

What plain HTTP cannot show: that the redirect chain, cookie attributes (HttpOnly, SameSite=Lax across the
provider's redirect back), chunked cookies and Sec-Fetch-* headers work as a browser actually handles them.
The provider is the real oidc-provider with its dev interactions: a login form (any username and password;
the username becomes `sub`), then a consent form, and on logout a confirmation page.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.support.echo import header_values

pytestmark = pytest.mark.e2e

# Where the screenshots are copied for a person to look at, besides the test's own tmp_path.
SHOTS_DIR = Path("/tmp/authproxy-shots")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SESSION_COOKIE = "_authproxy"
CHUNK_COOKIE = re.compile(r"^_authproxy_\d+$")


def _on_login_form(page: Page, issuer: str) -> bool:
    return page.url.startswith(issuer + "/interaction/")


async def sign_in(page: Page, issuer: str, username: str = "alice", password: str = "correct horse") -> None:
    """Answer the provider's login form, then its consent form, as a person would; wait to leave the provider."""
    assert _on_login_form(page, issuer), f"expected the provider's login page, at {page.url}"
    await page.locator("input[name=login]").fill(username)
    await page.locator("input[name=password]").fill(password)
    await page.get_by_role("button", name="Sign-in").click()
    await page.get_by_role("button", name="Continue").click()
    try:
        await page.wait_for_url(lambda url: not url.startswith(issuer))
    except PlaywrightTimeoutError:
        # E.g. the proxy lost the new session and sent the browser back for another consent.
        pytest.fail(f"still at the provider after consenting: {page.url}")


async def echo_page(page: Page) -> tuple[str, str]:
    """The (user, raw path) shown by the echo upstream's HTML page; fails with what was shown instead."""
    if await page.title() != "echo":
        body = await page.locator("body").inner_text()
        pytest.fail(f"not the upstream's page at {page.url}: {body[:300]!r}")
    return await page.locator("#user").inner_text(), await page.locator("#path").inner_text()


async def expect_visible(page: Page, selector: str) -> None:
    assert await page.locator(selector).is_visible(), f"{selector} is not visible at {page.url}"


async def session_cookies(context: BrowserContext, url: str) -> dict[str, dict]:
    """The proxy's session cookies in the browser: the plain one or its chunks (not the login-state ones)."""
    return {c["name"]: c for c in await context.cookies(url)
            if c["name"] == SESSION_COOKIE or CHUNK_COOKIE.match(c["name"])}


async def test_deep_link_login_returns_to_the_exact_url(stack, context, page):
    target = stack.url + "/html/deep/page?x=1&y=a%20b"
    await page.goto(target)
    assert _on_login_form(page, stack.idp.issuer)
    await expect_visible(page, "input[name=password]")

    await sign_in(page, stack.idp.issuer, "alice")

    assert page.url == target
    assert await echo_page(page) == ("alice", "/html/deep/page?x=1&y=a%20b")
    bearer = header_values(stack.echo.seen[-1], "Authorization")
    assert len(bearer) == 1 and bearer[0].startswith("Bearer ")
    access_token = bearer[0].removeprefix("Bearer ")
    cookies = await session_cookies(context, stack.url)
    assert list(cookies) == [SESSION_COOKIE]
    cookie = cookies[SESSION_COOKIE]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert "alice" not in cookie["value"] and access_token not in cookie["value"]
    # HttpOnly as the page's own scripts see it, not only as the cookie store reports it.
    assert SESSION_COOKIE not in await page.evaluate("document.cookie")


async def test_sign_out_ends_both_sessions(stack, context, page):
    await page.goto(stack.url + "/html/app")
    await sign_in(page, stack.idp.issuer)
    assert (await echo_page(page))[0] == "alice"

    await page.goto(stack.url + "/oauth2/sign_out")
    assert urlsplit(page.url).path == "/session/end"
    await page.get_by_role("button", name="Yes, sign me out").click()
    await page.wait_for_url(lambda url: url.startswith(stack.url + "/oauth2/signed_out"))
    assert "signed out" in (await page.locator("body").inner_text()).lower()
    assert await session_cookies(context, stack.url) == {}

    # The provider's session ended too: it asks for a password again, not only for consent.
    await page.goto(stack.url + "/html/app")
    assert _on_login_form(page, stack.idp.issuer)
    await expect_visible(page, "input[name=password]")


async def test_six_kilobyte_id_token_travels_in_chunked_cookies(stack_factory, context, page):
    stack = await stack_factory(idp_options={"extra_claims": {"filler": "x" * 4000}})
    await page.goto(stack.url + "/html/big")
    await sign_in(page, stack.idp.issuer, "bob")
    assert page.url == stack.url + "/html/big"
    assert await echo_page(page) == ("bob", "/html/big")

    cookies = await session_cookies(context, stack.url)
    names = sorted(cookies)
    assert len(names) >= 2 and names[:2] == ["_authproxy_0", "_authproxy_1"], names
    assert SESSION_COOKIE not in cookies
    assert all(c["httpOnly"] for c in cookies.values())

    # A second page: the browser sent every chunk back and the proxy joined them (else: off to the provider).
    await page.goto(stack.url + "/html/second?n=2")
    assert page.url == stack.url + "/html/second?n=2"
    assert await echo_page(page) == ("bob", "/html/second?n=2")
    assert "_authproxy" not in ";".join(header_values(stack.echo.seen[-1], "Cookie"))


async def test_spa_fetch_without_session_gets_401_not_a_redirect(stack, context, page):
    await page.goto(stack.url + "/html/app")
    await sign_in(page, stack.idp.issuer)
    with_session = await page.evaluate("fetch('/api/data').then(r => r.json())")
    assert with_session["path"] == "/api/data"

    await context.clear_cookies(name=re.compile(r"^_authproxy"))
    assert await session_cookies(context, stack.url) == {}
    status = await page.evaluate("fetch('/api/data').then(r => [r.status, r.redirected])")
    assert status == [401, False]
    body = await page.evaluate("fetch('/api/data').then(r => r.json())")
    assert body["login_url"].startswith(stack.url + "/oauth2/start")
    # Even a fetch that asks for HTML is not a navigation (Sec-Fetch-Mode: cors): still 401, never a redirect
    # to the provider, which fetch would follow into a CORS error.
    html_status = await page.evaluate(
        "fetch('/html/x', {headers: {Accept: 'text/html'}}).then(r => [r.status, r.redirected])")
    assert html_status == [401, False]


async def test_signed_out_and_error_pages_render(stack, page, tmp_path):
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    await page.goto(stack.url + "/oauth2/signed_out")
    assert "signed out" in (await page.locator("body").inner_text()).lower()
    signed_out = tmp_path / "signed_out.png"
    await page.screenshot(path=signed_out, full_page=True)

    response = await page.goto(stack.url + "/oauth2/callback?state=bogus&code=x")
    assert response is not None and response.status == 403
    text = await page.locator("body").inner_text()
    assert "Request id" in text
    assert response.headers["x-request-id"] in text
    assert await page.get_by_role("link", name="Sign in again").is_visible()
    forbidden = tmp_path / "error_403.png"
    await page.screenshot(path=forbidden, full_page=True)

    # The sign-in page a user meets: the provider's form, reached through the proxy's redirect.
    await page.goto(stack.url + "/html/protected")
    assert _on_login_form(page, stack.idp.issuer)
    sign_in_page = tmp_path / "sign_in.png"
    await page.screenshot(path=sign_in_page, full_page=True)

    for shot in (signed_out, forbidden, sign_in_page):
        data = shot.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), shot
        shutil.copyfile(shot, SHOTS_DIR / shot.name)
