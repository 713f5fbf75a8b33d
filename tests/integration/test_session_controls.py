"""Session controls end to end (issue 17), through the real oidc-provider, an echo upstream and, for the Redis
store, a real redis-server: the idle timeout in both stores, the minimal cookie, the header-budget warning."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.session import CODEC
from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.integration.test_websocket import WsApp, start_ws_app, ws_url

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
PAGE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
# 2 s: a use is recorded at most every 0.5 s, and a session unused for 2.5 s is signed out.
IDLE = {"name": "_authproxy", "idle_timeout": "2s"}


def redis_section(url: str) -> dict:
    return {"store": "redis", "redis": {"url": url, "key_prefix": "ap:", "timeout": "1s", "connect_timeout": "1s"}}


def jar_cookies(browser: aiohttp.ClientSession) -> dict[str, str]:
    return {c.key: c.value for c in browser.cookie_jar if c.key == "_authproxy" or (c.key.startswith("_authproxy_")
            and "_login_" not in c.key)}


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


async def get(url: str, cookies: dict[str, str], headers: dict[str, str] = API) -> aiohttp.ClientResponse:
    """One request with exactly these cookies (a second browser, or an attacker with a copy)."""
    async with aiohttp.ClientSession() as other, \
            other.get(url, headers={**headers, "Cookie": cookie_header(cookies)}, allow_redirects=False) as resp:
        await resp.read()
        return resp


@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_idle_timeout_signs_out_an_unused_session_and_keeps_a_used_one(stack_factory, redis_server,
                                                                             browser_session, store):
    sections = {"session": redis_section(redis_server.url)} if store == "redis" else {}
    stack = await stack_factory(cookie=IDLE, **sections)
    await login_via_http(browser_session, stack.url + "/")
    first = jar_cookies(browser_session)
    writes = 0
    for _ in range(8):                                  # 3.2 s of use: past the 2.5 s window
        await asyncio.sleep(0.4)
        async with browser_session.get(stack.url + "/busy", headers=API) as resp:
            assert resp.status == 200
            writes += len([h for h in resp.headers.getall("Set-Cookie", []) if h.startswith("_authproxy")])
    if store == "cookie":
        assert 3 <= writes <= 8                         # a new cookie every 0.5 s or so, not on every request
        stale_copy = await get(stack.url + "/copy", first)
        assert stale_copy.status == 401                 # the cookie from sign-in is idle: it extends nothing
    else:
        assert writes == 0                              # the ticket never changes: the use is the key's TTL
        assert jar_cookies(browser_session) == first
    await asyncio.sleep(2.8)                            # now unused for longer than the window
    idle = jar_cookies(browser_session)
    async with browser_session.get(stack.url + "/page", headers=PAGE, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(stack.idp.issuer)   # to sign in again
    api = await get(stack.url + "/api", idle)
    assert api.status == 401


async def test_redis_idle_session_key_expires_in_redis_itself(stack_factory, redis_server, browser_session):
    stack = await stack_factory(cookie=IDLE, session=redis_section(redis_server.url))
    await login_via_http(browser_session, stack.url + "/")
    client = aioredis.from_url(redis_server.url)
    try:
        keys = [k for k in await client.keys("ap:s:*")]
        assert len(keys) == 1
        assert 0 < await client.pttl(keys[0]) <= 2500       # the idle window, not cookie.expire's week
        await asyncio.sleep(0.7)
        async with browser_session.get(stack.url + "/use", headers=API) as resp:
            assert resp.status == 200
        assert await client.pttl(keys[0]) > 2000            # slid forward by the use
        await asyncio.sleep(2.8)
        assert await client.exists(keys[0]) == 0           # gone from Redis: every replica sees it at once
    finally:
        await client.aclose()
    async with browser_session.get(stack.url + "/api", headers=API) as resp:
        assert resp.status == 401


async def test_minimal_cookie_is_smaller_forwards_the_same_and_refreshes(stack_factory, browser_session):
    full_stack = await stack_factory(cookie={"name": "_authproxy"})
    await login_via_http(browser_session, full_stack.url + "/")
    full = jar_cookies(browser_session)
    assert full_stack.proxy.app[CODEC].load(full).id_token

    stack = await stack_factory(cookie={"name": "_authproxy", "minimal": True}, idp_options={"access_token_ttl": 3},
                                backchannel=True)       # so the ID token carries a sid, which must stay
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        result = await login_via_http(browser, stack.url + "/first")
        record = json.loads(result.body_text)
        small = jar_cookies(browser)
        assert len(cookie_header(small)) < len(cookie_header(full)) - 700      # the ID token's ≈ 800 bytes
        session = stack.proxy.app[CODEC].load(small)
        assert session.id_token is None and session.refresh_token and session.sid
        assert header_values(record, "X-Forwarded-User") == ["alice"]
        assert header_values(record, "X-Forwarded-Email") == ["alice@example.test"]
        assert header_values(record, "Authorization")[0].startswith("Bearer ")
        first_token = header_values(record, "Authorization")[0]
        await asyncio.sleep(2.2)                                               # due: refreshed
        async with browser.get(stack.url + "/later", headers=API) as resp:
            later = await resp.json()
        assert header_values(later, "Authorization")[0] != first_token
        assert header_values(later, "X-Forwarded-Email") == ["alice@example.test"]
        refreshed = stack.proxy.app[CODEC].load(jar_cookies(browser))
        assert refreshed.id_token is None and refreshed.access_token != session.access_token
        assert stack.idp.count_grants("refresh_token") == 1
        # What is lost: sign-out sends no id_token_hint, but still names the client and the way back.
        async with browser.get(stack.url + "/oauth2/sign_out", allow_redirects=False) as resp:
            query = parse_qs(urlsplit(resp.headers["Location"]).query)
        assert "id_token_hint" not in query
        assert query["client_id"] == ["authproxy"] and query["post_logout_redirect_uri"]


async def test_a_sign_in_near_the_header_budget_is_logged_once_without_tokens(stack_factory, caplog):
    stack = await stack_factory(cookie={"name": "_authproxy", "header_budget": 4096},
                                idp_options={"extra_claims": {"filler": "x" * 1500}})
    caplog.set_level(logging.WARNING, logger="authproxy.session")
    tokens = []
    for user in ("alice", "bob"):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await login_via_http(browser, stack.url + "/", username=user)
            cookies = jar_cookies(browser)
            session = stack.proxy.app[CODEC].load(cookies)
            tokens += [session.access_token, session.refresh_token, session.id_token, *cookies.values()]
    lines = [r.getMessage() for r in caplog.records if "header budget" in r.getMessage()]
    assert len(lines) == 1                                  # once an hour per process, not once per sign-in
    assert "cookie.header_budget is 4096 (warning from 3072)" in lines[0]
    assert "cookie.minimal true" in lines[0] and "session.store: redis" in lines[0]
    for token in tokens:
        assert token and token[:24] not in lines[0]


@pytest.fixture
async def ws_upstream() -> AsyncIterator[WsApp]:
    """test_websocket.py's WebSocket app: echoes every frame."""
    app = await start_ws_app()
    yield app
    await app.runner.cleanup()


async def test_a_websocket_handshake_is_a_use_its_frames_are_not_and_idle_does_not_close_it(
        stack_factory, ws_upstream, browser_session):
    """The choice documented for cookie.idle_timeout: the handshake is a request and records a use (the
    cookie store's new cookie rides on the 101); frames on the open socket do not, so an HTTP request after
    the window is signed out; and the socket itself is not closed by the idle timeout."""
    stack = await stack_factory(cookie=IDLE, upstreams=[{"path": "/", "url": ws_upstream.url, "websockets": True}])
    await login_via_http(browser_session, stack.url + "/")
    before = jar_cookies(browser_session)
    await asyncio.sleep(0.7)                                    # a use is due
    async with browser_session.ws_connect(ws_url(stack)) as ws:
        after_handshake = jar_cookies(browser_session)
        assert after_handshake != before                        # the use was recorded on the 101
        assert stack.proxy.app[CODEC].load(after_handshake).last_seen is not None
        for _ in range(8):                                      # 3.2 s of traffic, past the 2.5 s window
            await ws.send_str("still here")
            assert (await ws.receive(timeout=5)).data == "still here"
            await asyncio.sleep(0.4)
        api = await get(stack.url + "/api", after_handshake)
        assert api.status == 401                                # frames are no use
        await ws.send_str("and open")
        assert (await ws.receive(timeout=5)).data == "and open"  # the socket is not closed by idleness


async def test_with_redis_an_idle_session_s_socket_ends_at_its_next_refresh(stack_factory, ws_upstream, redis_server,
                                                                            browser_session):
    """Documented: with the Redis store the idle session's key is gone, so the socket's background refresh at
    the access token's expiry finds no session and closes the socket with 4401 (frames kept no session)."""
    stack = await stack_factory(cookie=IDLE, session=redis_section(redis_server.url),
                                idp_options={"access_token_ttl": 4},
                                upstreams=[{"path": "/", "url": ws_upstream.url, "websockets": True}])
    await login_via_http(browser_session, stack.url + "/")
    async with browser_session.ws_connect(ws_url(stack)) as ws:
        async with asyncio.timeout(15):
            while True:
                await ws.send_str("still here")
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    break
                assert msg.data == "still here"
                await asyncio.sleep(0.3)
        assert (msg.data, msg.extra) == (4401, "session expired")
    assert stack.idp.count_grants("refresh_token") == 0        # the ended session spent no refresh grant
