"""Back-channel logout with the real oidc-provider: signing out at the provider ends the session here."""

from __future__ import annotations

import pytest

from tests.support.browserless import login_via_http, logout_via_http
from tests.support.fixtures import CLIENT_ID

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html"}


@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_signing_out_at_the_provider_ends_the_session(stack_factory, redis_server, browser_session, store):
    session_config = {"store": store, "redis": {"url": redis_server.url}}
    stack = await stack_factory(backchannel=True, session=session_config)
    await login_via_http(browser_session, stack.url + "/")
    async with browser_session.get(stack.url + "/before", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 200
    # The user signs out at the provider itself, not through the proxy.
    await logout_via_http(browser_session, f"{stack.idp.issuer}/session/end?client_id={CLIENT_ID}")
    event = await stack.idp.wait_for_event("backchannel", timeout=10)
    assert event["ok"] is True
    async with browser_session.get(stack.url + "/after", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(stack.idp.issuer)


async def test_bad_or_replayed_logout_tokens_are_refused(stack):
    import aiohttp
    async with aiohttp.ClientSession() as client:
        for body in ({}, {"logout_token": "not.a.jwt"}, {"logout_token": "a" * 50}):
            async with client.post(stack.url + "/oauth2/backchannel_logout", data=body) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"
