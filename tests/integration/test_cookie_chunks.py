"""A session that shrinks from several cookie chunks to one clears the chunks it no longer uses."""

from __future__ import annotations

import pytest

from tests.support.browserless import login_via_http

pytestmark = pytest.mark.integration


async def test_stale_chunks_are_cleared_when_the_session_shrinks(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"extra_claims": {"filler": "x" * 3000}})
    await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/oauth2/userinfo")
    names = sorted(c.key for c in browser_session.cookie_jar if c.key.startswith("_authproxy") and "login" not in c.key)
    assert names[:2] == ["_authproxy_0", "_authproxy_1"]
    # The provider stops adding the big claim; signing in again gives a session that fits one cookie.
    await stack.idp.restart(extra_claims=None)
    async with browser_session.get(stack.url + "/oauth2/start?rd=/oauth2/userinfo", allow_redirects=False) as resp:
        start = resp.headers["Location"]
    await login_via_http(browser_session, start)
    names = sorted(c.key for c in browser_session.cookie_jar if c.key.startswith("_authproxy") and "login" not in c.key)
    assert names == ["_authproxy"]                  # _authproxy_0/_1 were deleted, not left to be sent forever
    async with browser_session.get(stack.url + "/oauth2/userinfo") as resp:
        assert resp.status == 200 and (await resp.json())["user"] == "alice"


async def test_a_session_too_large_for_cookies_is_a_clear_page_not_a_loop(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"extra_claims": {"filler": "x" * 40_000}})
    result = await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/page")
    assert result.status == 413
    assert "session.store: redis" in result.body_text and "Request id" in result.body_text
    assert not [c for c in browser_session.cookie_jar if c.key.startswith("_authproxy") and "login" not in c.key]
