"""A session ends everywhere at once (issue 12), with the real oidc-provider and a real redis-server.

Sign-out, back-channel logout, a refused refresh: each reaches a copy of the cookie, a request still in
flight (it must not write the session back), the session's WebSockets and their refresh watcher; and a
Redis that is down does not block what needs no session.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.integration.test_websocket import expect_close, start_ws_app, wait_until, ws_url
from tests.support.browserless import login_via_http, logout_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET
from tests.support.ports import free_port
from tests.support.redis_server import start_redis

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
TTL = 4          # access-token lifetime at the provider; the proxy refreshes after half of it


def cookie_header(client: aiohttp.ClientSession) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar if c.key.startswith("_authproxy"))


def session_cookies_set(resp: aiohttp.ClientResponse) -> list[str]:
    """The session cookies this response sets to a value (clearing ones excluded)."""
    return [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith("_authproxy")
            and not c.split(";", 1)[0].endswith("=") and "Max-Age=0" not in c]


def session_cookies_cleared(resp: aiohttp.ClientResponse) -> list[str]:
    return [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith("_authproxy") and "Max-Age=0" in c]


def store_section(kind: str, redis_url: str) -> dict:
    if kind == "cookie":
        return {"store": "cookie"}                       # single instance: the denylist in memory
    return {"store": "cookie" if kind == "cookie+redis" else "redis", "redis": {"url": redis_url}}


async def get(url: str, cookie: str, headers: dict | None = None) -> tuple[int, aiohttp.ClientResponse, str]:
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers={**API, **(headers or {}), "Cookie": cookie},
                              allow_redirects=False) as resp:
            return resp.status, resp, await resp.text()


@pytest.mark.parametrize("how", ["sign_out", "backchannel"])
@pytest.mark.parametrize("store", ["cookie", "cookie+redis", "redis"])
async def test_a_request_in_flight_does_not_undo_the_end(stack_factory, redis_server, rich, browser_session,
                                                         store, how):
    stack = await stack_factory(upstreams=[{"path": "/", "url": rich.url}], backchannel=how == "backchannel",
                                idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True},
                                session=store_section(store, redis_server.url))
    await login_via_http(browser_session, stack.url + "/")
    old = cookie_header(browser_session)
    await asyncio.sleep(TTL / 2 + 0.3)                        # due (at least this long: safe under load)
    slow = asyncio.create_task(get(f"{stack.url}/held", old))
    # The upstream holds the request until released: it stays in flight however long the end takes.
    await asyncio.wait_for(rich.events.setdefault("held-arrived", asyncio.Event()).wait(), 15)
    assert stack.idp.count_grants("refresh_token") == 1       # refreshed before it was forwarded
    assert not slow.done()
    if how == "sign_out":
        status, _, _ = await get(stack.url + "/oauth2/sign_out", old)
        assert status == 302
    else:
        await logout_via_http(browser_session, f"{stack.idp.issuer}/session/end?client_id={CLIENT_ID}")
        assert (await stack.idp.wait_for_event("backchannel", timeout=10))["ok"] is True
    assert not slow.done()
    rich.events.setdefault("held-release", asyncio.Event()).set()
    status, resp, body = await slow
    assert status == 200 and body == "late"                   # it began before the end: it is answered ...
    assert session_cookies_set(resp) == []                    # ... but does not sign the browser in again
    assert session_cookies_cleared(resp)
    status, _, _ = await get(stack.url + "/after", old)       # a copy of the old cookie is refused
    assert status == 401
    assert stack.idp.count_grants("refresh_token") == 1


async def test_sign_out_ends_a_copied_cookie_on_one_instance(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True})
    await login_via_http(browser_session, stack.url + "/")
    copy = cookie_header(browser_session)
    async with browser_session.get(stack.url + "/oauth2/sign_out", allow_redirects=False) as resp:
        assert resp.status == 302 and session_cookies_cleared(resp)
    status, resp, _ = await get(stack.url + "/with-copy", copy)
    assert status == 401 and session_cookies_cleared(resp)
    await asyncio.sleep(TTL / 2 + 0.3)                        # due: the copy must not refresh either
    status, _, _ = await get(stack.url + "/with-copy-later", copy)
    assert status == 401
    assert stack.idp.count_grants("refresh_token", ok=None) == 0


async def test_a_refused_refresh_ends_the_session_for_every_copy(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True})
    await login_via_http(browser_session, stack.url + "/")
    copy = cookie_header(browser_session)
    cookies = {c.key: c.value for c in browser_session.cookie_jar if c.key.startswith("_authproxy")}
    from proxy.session import CODEC
    await stack.idp.revoke(stack.proxy.app[CODEC].load(cookies).refresh_token, CLIENT_ID, CLIENT_SECRET)
    await asyncio.sleep(TTL / 2 + 0.3)
    status, _, _ = await get(stack.url + "/first", copy)
    assert status == 401
    status, _, _ = await get(stack.url + "/second", copy)     # refused at once: no second grant attempt
    assert status == 401
    assert stack.idp.count_grants("refresh_token", ok=False) == 1


@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_backchannel_logout_closes_the_sessions_websockets(stack_factory, redis_server, browser_session,
                                                                 store):
    ws_app = await start_ws_app()
    try:
        stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}], backchannel=True,
                                    idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True},
                                    session=store_section(store, redis_server.url))
        await login_via_http(browser_session, stack.url + "/")
        cookie = cookie_header(browser_session)
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=2)).data == "hello"
            await logout_via_http(browser_session, f"{stack.idp.issuer}/session/end?client_id={CLIENT_ID}")
            assert (await stack.idp.wait_for_event("backchannel", timeout=10))["ok"] is True
            started = time.monotonic()
            assert await expect_close(ws, 3.0) == (4401, "signed out at the provider")
            assert time.monotonic() - started < 3.0
        await wait_until(lambda: ws_app.closes)
        await asyncio.sleep(TTL + 1)                          # past the expiry the watcher would refresh at
        assert stack.idp.count_grants("refresh_token", ok=None) == 0
    finally:
        await ws_app.runner.cleanup()


async def test_redis_down_blocks_only_what_needs_the_session(stack_factory, browser_session):
    redis = await start_redis(free_port())
    try:
        stack = await stack_factory(session={"store": "redis", "redis": {"url": redis.url, "timeout": "1s",
                                                                          "connect_timeout": "1s"}},
                                    skip_auth=[{"path": "^/public/"}],
                                    cors={"allowed_origins": ["https://spa.example"], "allow_preflight": True,
                                          "preflight_paths": ["^/api/"]})
        await login_via_http(browser_session, stack.url + "/")
        cookie = cookie_header(browser_session)
        await redis.kill()
        status, _, body = await get(stack.url + "/public/page", cookie)
        assert status == 200 and '"/public/page"' in body        # passes with whatever cookie it carries
        assert (await get(stack.url + "/ping", cookie))[0] == 200
        async with aiohttp.ClientSession() as client:
            async with client.options(stack.url + "/api/x", headers={
                    "Cookie": cookie, "Origin": "https://spa.example", "Access-Control-Request-Method": "PUT"}) as resp:
                assert resp.status == 200                       # an allowed preflight reaches the app
        assert (await get(stack.url + "/private", cookie))[0] == 503
        status, resp, _ = await get(stack.url + "/oauth2/sign_out", cookie, {"Accept": "text/html"})
        assert status == 302                 # ended on this host; recorded once Redis is back (test_session_end_review)
        assert session_cookies_cleared(resp) and session_cookies_set(resp) == []
    finally:
        await redis.stop()


async def test_a_refresh_refused_to_a_websocket_ends_the_session_for_http_too(stack_factory, browser_session):
    """The socket's watcher meets the refused refresh first; the browser's next request is refused at once,
    without spending another grant attempt on a refresh token the provider already refused."""
    ws_app = await start_ws_app()
    try:
        stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}],
                                    idp_options={"access_token_ttl": TTL})
        await login_via_http(browser_session, stack.url + "/")
        cookie = cookie_header(browser_session)
        from proxy.session import CODEC
        session = stack.proxy.app[CODEC].load({c.key: c.value for c in browser_session.cookie_jar
                                               if c.key.startswith("_authproxy")})
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
            await stack.idp.revoke(session.refresh_token, CLIENT_ID, CLIENT_SECRET)
            assert (await expect_close(ws, TTL + 2.0))[0] == 4401
        await wait_until(lambda: stack.idp.count_grants("refresh_token", ok=False) == 1, timeout=3)
        status, _, _ = await get(stack.url + "/after", cookie)
        assert status == 401
        assert stack.idp.count_grants("refresh_token", ok=None) == 1
    finally:
        await ws_app.runner.cleanup()
