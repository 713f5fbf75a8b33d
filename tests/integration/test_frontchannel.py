"""Front-channel logout (OpenID Connect Front-Channel Logout 1.0, issue 20).

oidc-provider 9 no longer implements front-channel logout, so the test plays the provider's logout page:
it loads /oauth2/frontchannel_logout?iss=…&sid=… as that page's iframe would — without the session cookie,
which a cross-site iframe does not carry — after a real sign-in at oidc-provider gave the session its sid.
"""

from __future__ import annotations

import aiohttp
import pytest

from proxy.session import CODEC
from tests.support.browserless import login_via_http

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html"}


def _sid(stack, session: aiohttp.ClientSession) -> str:
    cookies = {c.key: c.value for c in session.cookie_jar if c.key.startswith("_authproxy")}
    sid = stack.proxy.app[CODEC].load(cookies).sid
    assert sid
    return sid


@pytest.fixture
async def fc_stack(stack_factory):
    # backchannel=True registers the client for sid in its ID tokens (backchannel_logout_session_required).
    return await stack_factory(backchannel=True, provider={"frontchannel_logout": True})


async def test_the_providers_iframe_ends_every_session_of_that_sid(fc_stack, browser_session):
    stack = fc_stack
    await login_via_http(browser_session, stack.url + "/")
    sid = _sid(stack, browser_session)
    async with aiohttp.ClientSession() as iframe:        # no cookies: a cross-site iframe sends none (Lax)
        async with iframe.get(stack.url + "/oauth2/frontchannel_logout",
                              params={"iss": stack.idp.issuer, "sid": sid}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Security-Policy"] == f"default-src 'none'; frame-ancestors {stack.idp.issuer}"
            assert "no-store" in resp.headers["Cache-Control"]
    async with browser_session.get(stack.url + "/after", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(stack.idp.issuer)


@pytest.mark.parametrize("params", [{"iss": "https://evil.example", "sid": "SID"}, {"sid": "SID"},
                                    {"iss": "ISS"}, {"iss": "ISS", "sid": "a b"}, {"iss": "ISS", "sid": "x" * 300}])
async def test_another_issuer_or_no_sid_ends_nothing(fc_stack, browser_session, params):
    stack = fc_stack
    await login_via_http(browser_session, stack.url + "/")
    sid = _sid(stack, browser_session)
    query = {k: v.replace("SID", sid).replace("ISS", stack.idp.issuer) for k, v in params.items()}
    async with aiohttp.ClientSession() as iframe:
        async with iframe.get(stack.url + "/oauth2/frontchannel_logout", params=query) as resp:
            assert resp.status == 400
    async with browser_session.get(stack.url + "/after", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 200


async def test_off_unless_configured(stack):
    async with aiohttp.ClientSession() as iframe:
        async with iframe.get(stack.url + "/oauth2/frontchannel_logout",
                              params={"iss": stack.idp.issuer, "sid": "x"}) as resp:
            assert resp.status == 404
