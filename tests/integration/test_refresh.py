"""Refresh against the real oidc-provider with access tokens of a few seconds and refresh-token rotation."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from proxy.session import CODEC
from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET
from tests.support.timing import OffsetClock

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
TTL = 4          # access token lifetime at the provider; the refresh window is half of it
# For tests that need a token that is due but not yet expired, or not yet due again: a lifetime long enough
# that those windows are tens of seconds wide, and the proxy's clock moved instead of the test sleeping.
LONG_TTL = 60


def bearer(record: dict) -> str:
    return header_values(record, "Authorization")[0].removeprefix("Bearer ")


def session_of(stack, client: aiohttp.ClientSession):
    cookies = {c.key: c.value for c in client.cookie_jar if c.key.startswith("_authproxy")}
    return stack.proxy.app[CODEC].load(cookies)


def cookie_header(client: aiohttp.ClientSession) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar if c.key.startswith("_authproxy"))


@pytest.fixture
async def short_stack(stack_factory):
    return await stack_factory(idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True})


async def test_refresh_when_due_forwards_new_token_and_sets_cookie(short_stack, browser_session):
    stack = short_stack
    first = json.loads((await login_via_http(browser_session, stack.url + "/a")).body_text)
    old_token = bearer(first)
    await asyncio.sleep(TTL / 2 + 0.3)
    async with browser_session.get(stack.url + "/b", headers=API) as resp:
        assert resp.status == 200
        record = await resp.json()
        assert any(c.startswith("_authproxy=") for c in resp.headers.getall("Set-Cookie"))
    new_token = bearer(record)
    assert new_token != old_token
    assert (await stack.idp.introspect(new_token, CLIENT_ID, CLIENT_SECRET))["active"] is True
    assert stack.idp.count_grants("refresh_token") == 1
    # Several expiries in a row keep the session alive, a new token each time.
    tokens = {old_token, new_token}
    for _ in range(2):
        await asyncio.sleep(TTL / 2 + 0.3)
        async with browser_session.get(stack.url + "/c", headers=API) as resp:
            assert resp.status == 200
            tokens.add(bearer(await resp.json()))
    assert len(tokens) == 4 and stack.idp.count_grants("refresh_token") == 3
    assert stack.idp.count_grants("refresh_token", ok=False) == 0


async def test_concurrent_requests_after_expiry_cause_one_refresh(short_stack, browser_session):
    stack = short_stack
    await login_via_http(browser_session, stack.url + "/")
    await asyncio.sleep(TTL + 0.3)                           # fully expired
    cookie = cookie_header(browser_session)
    async with aiohttp.ClientSession() as client:
        async def one(i: int) -> tuple[int, str]:
            async with client.get(f"{stack.url}/n/{i}", headers={**API, "Cookie": cookie}) as resp:
                return resp.status, bearer(await resp.json()) if resp.status == 200 else ""
        results = await asyncio.gather(*(one(i) for i in range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert len({token for _, token in results}) == 1          # all forwarded with the one new token
    assert stack.idp.count_grants("refresh_token") == 1
    assert stack.idp.count_grants("refresh_token", ok=False) == 0


async def test_replayed_pre_refresh_cookie_is_served_from_cache(stack_factory, browser_session):
    # The replay must come before the refreshed token is due in turn: LONG_TTL / 2 of the proxy's time,
    # not TTL / 2 of a loaded machine's.
    clock = OffsetClock()
    stack = await stack_factory(idp_options={"access_token_ttl": LONG_TTL, "rotate_refresh_token": True},
                                clock=clock)
    await login_via_http(browser_session, stack.url + "/")
    old_cookie = cookie_header(browser_session)
    clock.advance(LONG_TTL / 2 + 1)                           # due
    async with browser_session.get(stack.url + "/x", headers=API) as resp:
        assert resp.status == 200
        refreshed = bearer(await resp.json())
    async with aiohttp.ClientSession() as other_tab:
        async with other_tab.get(stack.url + "/y", headers={**API, "Cookie": old_cookie}) as resp:
            assert resp.status == 200
            assert bearer(await resp.json()) == refreshed
            assert any(c.startswith("_authproxy=") for c in resp.headers.getall("Set-Cookie"))
    assert stack.idp.count_grants("refresh_token") == 1
    assert stack.idp.count_grants("refresh_token", ok=False) == 0   # the spent token was never sent again


async def test_revoked_refresh_token_means_clean_new_login(short_stack, browser_session):
    stack = short_stack
    await login_via_http(browser_session, stack.url + "/")
    session = session_of(stack, browser_session)
    await stack.idp.revoke(session.refresh_token, CLIENT_ID, CLIENT_SECRET)
    await asyncio.sleep(TTL / 2 + 0.3)
    async with browser_session.get(stack.url + "/page?q=1", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith(stack.idp.issuer)
    assert stack.idp.count_grants("refresh_token", ok=False) == 1
    again = await login_via_http(browser_session, stack.url + "/page?q=1")
    assert again.status == 200 and json.loads(again.body_text)["raw_path"] == "/page?q=1"


async def test_api_client_gets_401_after_failed_refresh(short_stack, browser_session):
    stack = short_stack
    await login_via_http(browser_session, stack.url + "/")
    await stack.idp.revoke(session_of(stack, browser_session).refresh_token, CLIENT_ID, CLIENT_SECRET)
    await asyncio.sleep(TTL / 2 + 0.3)
    async with browser_session.get(stack.url + "/api", headers=API) as resp:
        assert resp.status == 401
        assert "login_url" in await resp.json()


async def test_provider_down_valid_token_passes_expired_token_503_then_recovers(stack_factory, browser_session):
    clock = OffsetClock()
    stack = await stack_factory(idp_options={"access_token_ttl": LONG_TTL, "rotate_refresh_token": True},
                                clock=clock)
    await login_via_http(browser_session, stack.url + "/")
    await stack.idp.pause()
    try:
        clock.advance(LONG_TTL / 2 + 1)                      # due, but still valid for LONG_TTL / 2 - 1 s
        async with browser_session.get(stack.url + "/still", headers=API) as resp:
            assert resp.status == 200
        clock.advance(LONG_TTL / 2)                          # now expired
        async with browser_session.get(stack.url + "/gone", headers=HTML) as resp:
            assert resp.status == 503
            assert "unavailable" in (await resp.text()).lower()
    finally:
        await stack.idp.resume()
    async with browser_session.get(stack.url + "/back", headers=API) as resp:
        assert resp.status == 200
    assert stack.idp.count_grants("refresh_token") == 1


async def test_session_without_refresh_token_ends_at_expiry(stack_factory, browser_session):
    clock = OffsetClock()
    stack = await stack_factory(idp_options={"access_token_ttl": LONG_TTL},
                                provider={"scopes": ["openid", "email", "profile"],
                                          "extra_authorize_params": {}},
                                client={"grant_types": ["authorization_code"]}, clock=clock)
    await login_via_http(browser_session, stack.url + "/")
    assert session_of(stack, browser_session).refresh_token is None
    async with browser_session.get(stack.url + "/ok", headers=API) as resp:   # valid for LONG_TTL s
        assert resp.status == 200
    clock.advance(LONG_TTL + 1)
    async with browser_session.get(stack.url + "/later", headers=API) as resp:
        assert resp.status == 401
