"""Adversarial review of issue 12 (one way a session ends): races and edges the first tests did not reach.

Real oidc-provider, real redis-server, real upstreams on loopback (fixtures as in test_session_end.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import CookieError
from tests.integration.test_session_end import cookie_header, get, store_section
from tests.integration.test_websocket import expect_close, ws_url
from tests.support.browserless import login_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import start_proxy_process

pytestmark = pytest.mark.integration


@dataclass
class GatedWsApp:
    """A WebSocket upstream that holds each handshake until the test opens the gate: the window between
    the proxy's session check and the socket being registered as the session's."""

    url: str
    runner: web.AppRunner
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            return web.Response(text="plain page")
        self.arrived.set()
        await self.gate.wait()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws


@pytest.fixture
async def gated_ws() -> AsyncIterator[GatedWsApp]:
    port = free_port()
    app = web.Application()
    runner = web.AppRunner(app, access_log=None)
    gated = GatedWsApp(url=f"http://127.0.0.1:{port}", runner=runner)
    app.router.add_get("/{tail:.*}", gated.handle)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield gated
    gated.gate.set()
    await runner.cleanup()


@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_a_websocket_upgrade_in_flight_at_sign_out_is_closed_once_it_opens(stack_factory, redis_server,
                                                                                 browser_session, gated_ws, store):
    """The gate checked the session, then sign-out ended it while the upstream was still answering the
    handshake: the socket was not registered yet, so nothing closed it when it opened a moment later."""
    stack = await stack_factory(upstreams=[{"path": "/", "url": gated_ws.url}],
                                session=store_section(store, redis_server.url))
    await login_via_http(browser_session, stack.url + "/")
    cookie = cookie_header(browser_session)
    async with aiohttp.ClientSession() as client:
        opening = asyncio.create_task(client.ws_connect(ws_url(stack), headers={"Cookie": cookie}))
        await asyncio.wait_for(gated_ws.arrived.wait(), 5)      # past the gate, upstream handshake pending
        status, _, _ = await get(stack.url + "/oauth2/sign_out", cookie)
        assert status == 302
        gated_ws.gate.set()
        ws = await asyncio.wait_for(opening, 5)
        try:
            assert await expect_close(ws, 3.0) == (4401, "session ended")
        finally:
            await ws.close()


async def test_redis_reload_sees_a_tombstone_even_when_the_session_key_was_forgotten(redis_server, monkeypatch):
    """A WebSocket's watcher refreshes hours after the socket's session was loaded; by then the
    per-session key may have left the store's bounded memory (KEYS_REMEMBERED). ``reload`` then
    returned the session as it was, without looking at Redis, so a session signed out on another
    replica was refreshed again (a grant spent) and its socket kept open."""
    from proxy import redis_store as module
    from tests.contract.test_store_contract import ended, redis_store, session

    monkeypatch.setattr(module, "KEYS_REMEMBERED", 1)
    here, there = redis_store(redis_server.url), redis_store(redis_server.url)
    try:
        s = session()
        cookies = dict(await here.save(s, {}))
        loaded = await here.load(cookies)
        await here.load(dict(await here.save(session("bob", sid="sid-b"), {})))   # pushes the first key out
        assert await here.reload(loaded) == loaded                               # live: nothing to say
        await there.record_end(ended(session_id=s.id))
        assert await here.reload(loaded) is None
    finally:
        await here.close()
        await there.close()


async def test_redis_user_index_holds_live_sessions_only(redis_server):
    """Each sign-in adds its id to the user's index set and refreshes the set's TTL; only an end took an
    id out, through a marker that expires with the session. So the set of a user who signs in now and
    then grew for ever with sessions long expired, and a back-channel logout of the user walked (and
    tombstoned) every one of them. A sign-in prunes the expired ones; an end empties the sets it read."""
    import redis.asyncio as aioredis
    from proxy.crypto import Sealer
    from tests.contract.test_store_contract import EXPIRE, SECRET, ended, redis_store, session
    from tests.unit.conftest import make_config

    store = redis_store(redis_server.url)
    client = aioredis.from_url(redis_server.url)
    index = f"t:sub:{Sealer(make_config(cookie={'secret': SECRET}).cookie.keys).blind('carol')}"
    try:
        old = time.time() - EXPIRE + 1                      # a session with a second left to live
        for _ in range(5):
            await store.save(session("carol", sid=None, created_at=old), {})
        await asyncio.sleep(2.2)                            # they expire in Redis
        fresh = session("carol", sid=None)
        await store.save(fresh, {})
        assert await client.smembers(index) == {fresh.id.encode()}
        await store.record_end(ended(sub="carol"))
        assert await client.smembers(index) == set()
        assert len(await client.keys("t:s:*")) == 1         # one tombstone: the live session's
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("store", ["cookie", "cookie+redis", "redis"])
async def test_after_sign_out_a_copied_cookie_is_nobody_on_every_path_that_needs_a_session(
        stack_factory, redis_server, browser_session, store):
    """Sessions load lazily: every path that needs one must load it, and so meet the end. The auth_request
    endpoint and userinfo answer 401 to a copy of the cookie, an upgrade is refused before the app sees it."""
    stack = await stack_factory(session=store_section(store, redis_server.url))
    await login_via_http(browser_session, stack.url + "/")
    copy = cookie_header(browser_session)
    assert (await get(stack.url + "/oauth2/auth", copy))[0] == 202
    assert (await get(stack.url + "/oauth2/sign_out", copy))[0] == 302
    for path in ("/oauth2/auth", "/oauth2/userinfo", "/private"):
        status, resp, _ = await get(stack.url + path, copy)
        assert status == 401, path
        assert not [c for c in resp.headers.getall("Set-Cookie", []) if "Max-Age=0" not in c
                    and c.startswith("_authproxy") and not c.split(";", 1)[0].endswith("=")], path
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(ws_url(stack), headers={"Cookie": copy, **{"Accept": "application/json"}})
        assert refused.value.status == 401


@pytest.mark.parametrize("cookie", ["garbage", "tampered"])
async def test_sign_out_with_a_bad_cookie_clears_it_and_ends_nothing_else(stack_factory, browser_session, cookie):
    stack = await stack_factory()
    await login_via_http(browser_session, stack.url + "/")
    good = cookie_header(browser_session)
    name, value = good.split("; ")[0].split("=", 1)
    bad = f"{name}=garbage" if cookie == "garbage" else f"{name}={value[:-4]}AAAA"
    status, resp, _ = await get(stack.url + "/oauth2/sign_out", bad, {"Accept": "text/html"})
    assert status == 302
    assert any(c.startswith(name + "=") and "Max-Age=0" in c for c in resp.headers.getall("Set-Cookie", []))
    assert (await get(stack.url + "/oauth2/auth", good))[0] == 202      # the real session is untouched


async def test_a_sign_out_while_redis_is_down_still_ends_the_session(stack_factory, browser_session):
    """Soak defect 4 (issue 19): a sign-out while Redis was down answered 503 and ended nothing — the
    user's WebSockets stayed open, and a copy of the cookie worked again once Redis was back. The
    session's id is in the cookie: the end is applied on this host at once and recorded in Redis (a
    tombstone every replica honours) as soon as Redis returns."""
    import redis.asyncio as aioredis

    from proxy.ending import ENDS
    from proxy.redis_store import TOMBSTONE
    from proxy.session import STORE
    from tests.integration.test_session_end import session_cookies_cleared
    from tests.integration.test_websocket import start_ws_app, wait_until
    from tests.support.redis_server import start_redis

    redis = await start_redis(free_port(), persist=True)        # the session survives the restart
    ws_app = await start_ws_app()
    try:
        stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}],
                                    session={"store": "redis", "redis": {"url": redis.url, "timeout": "1s",
                                                                         "connect_timeout": "1s"}})
        await login_via_http(browser_session, stack.url + "/")
        copy = cookie_header(browser_session)
        session_id = stack.proxy.app[STORE].session_id(dict(p.split("=", 1) for p in copy.split("; ")))
        assert session_id
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(ws_url(stack), headers={"Cookie": copy}) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=2)).data == "hello"
            await redis.kill()
            status, resp, body = await get(stack.url + "/oauth2/sign_out", copy, {"Accept": "text/html"})
            assert status == 302, body
            assert session_cookies_cleared(resp)
            assert await expect_close(ws, 3.0) == (4401, "signed out")
        assert stack.proxy.app[ENDS].unrecorded == 1
        await redis.start()
        await wait_until(lambda: stack.proxy.app[ENDS].unrecorded == 0, timeout=10)
        client = aioredis.from_url(redis.url)
        try:
            prefix = stack.proxy.app[STORE].config.key_prefix
            assert (await client.get(f"{prefix}s:{session_id}")) == TOMBSTONE.encode()
        finally:
            await client.aclose()
        status, _, _ = await get(stack.url + "/after", copy, {"Accept": "application/json"})
        assert status == 401
    finally:
        await ws_app.runner.cleanup()
        await redis.stop()


async def test_a_sign_out_with_redis_down_and_a_bad_ticket_is_a_plain_sign_out(stack_factory, browser_session):
    """A ticket that cannot be read names no session: nothing to end and no store to ask, so no error page."""
    from tests.support.redis_server import start_redis
    redis = await start_redis(free_port())
    try:
        stack = await stack_factory(session={"store": "redis", "redis": {"url": redis.url, "timeout": "1s",
                                                                          "connect_timeout": "1s"}})
        await login_via_http(browser_session, stack.url + "/")
        name = cookie_header(browser_session).split("=", 1)[0]
        await redis.kill()
        status, _, body = await get(stack.url + "/oauth2/sign_out", f"{name}=garbage", {"Accept": "text/html"})
        assert status == 302                  # a bad ticket is no session: nothing to end, nothing to say
        assert "could not be reached" not in body
    finally:
        await redis.stop()


async def test_every_key_the_stores_write_expires(redis_server):
    """Ends must not grow Redis for ever: sessions, tombstones, index sets and markers, locks, used
    logout-token ids and the cookie store's denylist all carry a TTL."""
    import redis.asyncio as aioredis
    from proxy.config import RedisConfig
    from proxy.ending import Reason
    from proxy.redis_store import RedisDenylist
    from tests.contract.test_store_contract import ended, redis_store, session

    store = redis_store(redis_server.url)
    denylist = RedisDenylist(RedisConfig(url=redis_server.url, key_prefix="t:"), lambda v: f"b{len(v)}{v[:3]}")
    client = aioredis.from_url(redis_server.url)
    try:
        sessions = [session("dave", sid=f"sid-{i}") for i in range(3)]
        for s in sessions:
            cookies = dict(await store.save(s, {}))
            loaded = await store.load(cookies)
            async with store.refresh_lock(loaded):
                await store.update(loaded.with_tokens(access_token="AT-2"))
        await store.record_end(ended(Reason.SIGN_OUT, session_id=sessions[0].id))
        await store.record_end(ended(sid="sid-1"))
        await store.record_end(ended(sub="dave"))
        await store.record_end(ended(sub="nobody"))
        assert await store.first_use("jti-1", 240)
        await denylist.record(ended(session_id="x", sid="y", sub="z"))
        assert await denylist.first_use("jti-2", 240)
        keys = await client.keys("*")
        assert keys
        assert {k: await client.ttl(k) for k in keys if await client.ttl(k) < 0} == {}
    finally:
        await client.aclose()
        await store.close()
        await denylist.close()


@pytest.mark.parametrize("kind", ["cookie", "cookie+redis", "redis"])
async def test_a_sign_in_after_a_back_channel_logout_by_sid_is_not_ended(redis_server, kind):
    """A provider may keep its session (and so its ``sid``) across a back-channel logout of one client,
    as it may after a logout of the user by ``sub``. The Redis store ended only the sessions the sid named
    then; the cookie store's denylists ended every later sign-in with that sid too, for a cookie's whole
    life: the user could not sign in for days. Now every store ends what existed at the end, as for ``sub``."""
    from proxy.config import RedisConfig
    from proxy.crypto import Sealer
    from proxy.redis_store import RedisDenylist
    from proxy.store import CookieStore
    from tests.contract.test_store_contract import SECRET, cookie_store, ended, redis_store, session
    from tests.unit.conftest import make_config

    if kind == "redis":
        store = redis_store(redis_server.url)
    else:
        store = cookie_store()
        if kind == "cookie+redis":
            blind = Sealer(make_config(cookie={"secret": SECRET}).cookie.keys).blind
            store = CookieStore(store.codec, RedisDenylist(RedisConfig(url=redis_server.url, key_prefix="t:"), blind))
    try:
        before = dict(await store.save(session("erin", sid="op-1"), {}))
        await store.record_end(ended(sid="op-1"))
        later = dict(await store.save(session("erin", sid="op-1", created_at=time.time() + 1), {}))
        with pytest.raises(CookieError):
            await store.load(before)
        assert (await store.load(later)).sid == "op-1"
    finally:
        await store.close()


@pytest.mark.parametrize("store", ["cookie", "cookie+redis", "redis"])
async def test_signing_in_again_right_after_a_logout_by_sub_works(stack_factory, redis_server, browser_session, store):
    """A back-channel logout without sid ends every session of the user that exists then; the sign-in
    that follows a moment later (the provider still knows the browser: no password) must stick."""
    import json

    from proxy.ending import ENDS, Reason
    stack = await stack_factory(session=store_section(store, redis_server.url))
    await login_via_http(browser_session, stack.url + "/")
    old = cookie_header(browser_session)
    status, _, body = await get(stack.url + "/oauth2/userinfo", old)
    assert status == 200
    ends = stack.proxy.app[ENDS]
    assert await ends.end(ends.new(Reason.BACKCHANNEL, sub=json.loads(body)["user"])) == (store == "redis")
    assert (await get(stack.url + "/oauth2/auth", old))[0] == 401
    browser_session.cookie_jar.clear(lambda c: c.key.startswith("_authproxy") or c.key.startswith("__Host-"))
    result = await login_via_http(browser_session, stack.url + "/again")
    assert result.status == 200
    new = cookie_header(browser_session)
    assert new and new != old
    for _ in range(2):
        assert (await get(stack.url + "/oauth2/auth", new))[0] == 202


async def test_a_server_sent_event_stream_ends_with_its_session(stack_factory, browser_session, rich):
    """A streamed response (server-sent events, a long poll) that began before the end is a request in flight
    too: the end cuts it at once instead of waiting for the app's next event (relay.LiveStream)."""
    stack = await stack_factory(upstreams=[{"path": "/", "url": rich.url}])
    await login_via_http(browser_session, stack.url + "/")
    cookie = cookie_header(browser_session)
    async with aiohttp.ClientSession() as client, \
            client.get(stack.url + "/sse", headers={"Cookie": cookie, "Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5) == b"data: first\n\n"
        assert (await get(stack.url + "/oauth2/sign_out", cookie))[0] == 302
        try:
            rest = await asyncio.wait_for(resp.content.read(), 3)
        except aiohttp.ClientPayloadError:
            rest = b""
        assert b"second" not in rest                  # cut, not waiting for the app's next event


async def test_a_server_sent_event_stream_ends_with_its_session_in_a_real_process(idp_factory, rich):
    """The same in ``python -m proxy``, which runs on uvloop: its transports are not subclasses of asyncio's,
    and an isinstance() check once left every stream unregistered there (and every large download cut)."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")])
    proxy = await start_proxy_process(config_dict(port=port, issuer=idp.issuer, upstream_url=rich.url,
                                                  client_id=CLIENT_ID, client_secret=CLIENT_SECRET))
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await login_via_http(browser, public + "/")
            cookie = cookie_header(browser)
        async with aiohttp.ClientSession() as client, \
                client.get(public + "/sse", headers={"Cookie": cookie, "Accept": "text/event-stream"}) as resp:
            assert resp.status == 200
            assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5) == b"data: first\n\n"
            assert (await get(public + "/oauth2/sign_out", cookie))[0] == 302
            try:
                rest = await asyncio.wait_for(resp.content.read(), 3)
            except aiohttp.ClientPayloadError:
                rest = b""
            assert b"second" not in rest
    finally:
        await proxy.stop()


async def test_the_redis_denylist_keeps_the_latest_end_when_ends_arrive_out_of_order(redis_server):
    """Two logouts of one user by sub, handled by two replicas, may reach Redis in either order. The
    denylist kept whichever came last, so an earlier end written after a later one brought back the
    sessions signed in between the two."""
    from proxy.config import RedisConfig
    from proxy.redis_store import RedisDenylist
    from tests.contract.test_store_contract import ended, session

    denylist = RedisDenylist(RedisConfig(url=redis_server.url, key_prefix="t:"), lambda v: v)
    try:
        first = ended(sub="frank", sid="op-f")
        second = dataclasses.replace(first, at=first.at + 10)
        between = session("frank", sid="op-f", created_at=(first.at + second.at) / 2)
        await denylist.record(second)
        await denylist.record(first)                         # late
        assert await denylist.ended(between)
        assert not await denylist.ended(session("frank", sid="op-f", created_at=second.at + 1))
    finally:
        await denylist.close()
