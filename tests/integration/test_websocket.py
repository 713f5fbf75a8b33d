"""WebSockets through the whole proxy: the real oidc-provider, a real WebSocket app, authproxy in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from yarl import URL

from proxy.session import CODEC
from proxy.websocket import SESSION_ENDED, SOCKETS, SessionTimer
from tests.support.browserless import login_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET
from tests.support.ports import free_port
from tests.support.timing import eventually

pytestmark = pytest.mark.integration

TTL = 3            # access-token lifetime for the expiry tests
REFRESHED_TTL = 8  # the refresh-at-expiry test: the refreshed token must not be due again before it ends


@dataclass
class WsApp:
    """A WebSocket app that echoes, obeys a few commands, and records what it saw.

    Text commands: ``close <code> <reason>`` closes from the app's side; ``push`` sends a text and a
    binary frame unasked. Anything else, text or binary, comes back as it is. A path under
    ``/refuse`` answers 403 instead of upgrading; a request that is no upgrade gets a plain page.
    """

    url: str
    runner: web.AppRunner
    handshakes: list[dict[str, list[str]]] = field(default_factory=list)      # upgrade requests only
    paths: list[str] = field(default_factory=list)                            # their raw paths
    plain: list[str] = field(default_factory=list)                            # paths of the others
    live: list[web.Request] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)                # close frames received

    def seen(self, index: int, name: str) -> list[str]:
        return self.handshakes[index].get(name.lower(), [])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",))
        if not ws.can_prepare(request).ok:
            self.plain.append(request.path)
            return web.Response(text="plain page")
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self.handshakes.append(headers)
        self.paths.append(request.raw_path)
        if request.path.startswith("/refuse"):
            return web.Response(status=403, text="no")
        await ws.prepare(request)
        self.live.append(request)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close "):
                _, code, reason = msg.data.split(" ", 2)
                await ws.close(code=int(code), message=reason.encode())
            elif msg.type is WSMsgType.TEXT and msg.data == "push":
                await ws.send_str("pushed")
                await ws.send_bytes(b"\x00pushed")
            elif msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:
                if msg.type is WSMsgType.CLOSE:
                    self.closes.append((msg.data, msg.extra))
                return ws


async def start_ws_app(unix_path: str | None = None) -> WsApp:
    """On a free loopback port, or on a unix socket at ``unix_path``."""
    port = free_port()
    app = web.Application()
    runner = web.AppRunner(app, access_log=None)
    ws_app = WsApp(url=f"unix:{unix_path}" if unix_path else f"http://127.0.0.1:{port}", runner=runner)
    app.router.add_get("/{tail:.*}", ws_app.handle)
    await runner.setup()
    site = web.UnixSite(runner, unix_path) if unix_path else web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return ws_app


@pytest.fixture
async def ws_app() -> AsyncIterator[WsApp]:
    app = await start_ws_app()
    yield app
    await app.runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def cookie_header(browser: aiohttp.ClientSession) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("_authproxy"))


def ws_url(stack, path: str = "/ws") -> str:
    return stack.url.replace("http://", "ws://") + path


async def signed_in(stack, browser: aiohttp.ClientSession, landing: str = "/") -> str:
    """Sign in over HTTP; the session cookie header for a WebSocket client."""
    result = await login_via_http(browser, stack.url + landing)
    assert result.status == 200
    return cookie_header(browser)


async def expect_close(ws: aiohttp.ClientWebSocketResponse, within: float) -> tuple[int, str]:
    """The close frame the proxy sends within ``within`` seconds (data frames before it are skipped)."""
    async with asyncio.timeout(within):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.CLOSE:
                return msg.data, msg.extra
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg


async def wait_until(predicate, timeout: float = 10.0) -> None:
    """A deadline for a loaded machine (a passing test waits only as long as the condition takes)."""
    await eventually(predicate, timeout=timeout, interval=0.02)


async def test_without_a_session_the_handshake_gets_401_and_never_reaches_the_app(stack_factory, ws_app, client):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}])
    browser_like = {"Sec-Fetch-Mode": "websocket", "Sec-Fetch-Dest": "empty", "Origin": stack.url}
    for headers in ({"Accept": "application/json"}, browser_like):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(ws_url(stack), headers=headers)
        assert refused.value.status == 401
    assert ws_app.handshakes == [] and ws_app.plain == []


async def test_frames_pings_and_closes_pass_both_ways_with_identity(stack_factory, ws_app, client,
                                                                     browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}])
    cookie = await signed_in(stack, browser_session)
    spoofed = {"Cookie": cookie + "; app=1", "X-Forwarded-User": "root", "Authorization": "Bearer forged"}
    url = URL(ws_url(stack, "/ws?room=a%2Fb%20c"), encoded=True)
    async with client.ws_connect(url, headers=spoofed, autoping=False, protocols=("chat.v1", "chat.v2"),
                                 origin=stack.url) as ws:
        assert ws.protocol == "chat.v2"                       # the app's choice reaches the client
        await ws.send_str("héllo")
        assert (await ws.receive()).data == "héllo"
        await ws.send_bytes(b"\x00\xffbin")
        assert (await ws.receive()).data == b"\x00\xffbin"
        await ws.send_str("push")                             # frames the app sends unasked
        assert [(await ws.receive()).data for _ in range(2)] == ["pushed", b"\x00pushed"]
        await ws.ping(b"are you there")
        pong = await ws.receive(timeout=2)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        await ws.send_str("close 4000 bye")
        assert await expect_close(ws, 2) == (4000, "bye")
    handshake = 0
    assert ws_app.paths[handshake] == "/ws?room=a%2Fb%20c"                # the query byte for byte
    assert ws_app.seen(handshake, "X-Forwarded-User") == ["alice"]
    assert [v.startswith("Bearer ") and v != "Bearer forged" for v in ws_app.seen(handshake, "Authorization")] == [True]
    assert ws_app.seen(handshake, "Cookie") == ["app=1"]
    assert ws_app.seen(handshake, "Sec-WebSocket-Protocol") == ["chat.v1,chat.v2"]
    assert len(ws_app.seen(handshake, "Sec-WebSocket-Key")) == 1   # aiohttp's own, not the client's too
    # The client closes this time: its code and reason reach the app.
    async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
        await ws.send_str("ping")
        assert (await ws.receive()).data == "ping"
        await ws.close(code=4001, message=b"client bye")
    await wait_until(lambda: ws_app.closes)
    assert ws_app.closes == [(4001, "client bye")]
    await wait_until(lambda: len(stack.proxy.app[SOCKETS]) == 0)


async def test_origin_must_be_the_proxys_own_or_listed(stack_factory, ws_app, client, browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}],
                                websocket_origins=["https://App.Example.com:443"])
    cookie = await signed_in(stack, browser_session)
    browser = {"Cookie": cookie, "Sec-Fetch-Mode": "websocket"}
    for origin in ("https://evil.example", stack.url.replace("127.0.0.1", "localhost"), "null",
                   stack.url + ".evil.example", None):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(ws_url(stack), headers=browser, origin=origin)
        assert refused.value.status == 403
    assert ws_app.handshakes == []
    for origin in (stack.url, stack.url.replace("http://", "HTTP://"), "https://app.example.com"):
        async with client.ws_connect(ws_url(stack), headers=browser, origin=origin) as ws:
            await ws.send_str("ok")
            assert (await ws.receive()).data == "ok"
    async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:   # no Origin: not a browser
        await ws.send_str("cli")
        assert (await ws.receive()).data == "cli"
    assert len(ws_app.handshakes) == 4


async def test_sign_out_closes_the_sessions_live_socket_with_4401(stack_factory, ws_app, client, browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}])
    cookie = await signed_in(stack, browser_session)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other_browser:
        other_cookie = await signed_in(stack, other_browser)
    async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws, \
            client.ws_connect(ws_url(stack), headers={"Cookie": other_cookie}) as other:
        async with client.get(stack.url + "/oauth2/sign_out", headers={"Cookie": cookie},
                              allow_redirects=False) as resp:
            assert resp.status == 302
        started = time.monotonic()
        assert await expect_close(ws, 1.0) == (SESSION_ENDED, "signed out")
        assert time.monotonic() - started < 1.0
        await other.send_str("still here")                   # another session's socket lives on
        assert (await other.receive(timeout=2)).data == "still here"
    await wait_until(lambda: ws_app.closes)
    assert ws_app.closes[0] == (SESSION_ENDED, "signed out")
    await wait_until(lambda: len(stack.proxy.app[SOCKETS]) == 0)


async def test_socket_closes_at_expiry_when_refresh_fails(stack_factory, ws_app, client, browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}], idp_options={"access_token_ttl": TTL})
    cookie = await signed_in(stack, browser_session)
    session = stack.proxy.app[CODEC].load({c.key: c.value for c in browser_session.cookie_jar
                                           if c.key.startswith("_authproxy")})
    async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
        await stack.idp.revoke(session.refresh_token, CLIENT_ID, CLIENT_SECRET)
        await ws.send_str("before expiry")
        assert (await ws.receive()).data == "before expiry"
        # Closed at expiry: not before it (the assertion below), and within a loaded machine's delay after.
        assert await expect_close(ws, session.expires_at - time.time() + 10) == (SESSION_ENDED, "session expired")
        assert time.time() >= session.expires_at
    assert stack.idp.count_grants("refresh_token", ok=False) == 1
    await wait_until(lambda: len(stack.proxy.app[SOCKETS]) == 0)


async def test_socket_stays_open_across_an_expiry_it_can_refresh(stack_factory, ws_app, client, browser_session):
    # Long enough that the refreshed token is not due again before the browser's request at the end (a
    # second grant would be counted): REFRESHED_TTL / 2 seconds of margin after the watcher's refresh.
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}],
                                idp_options={"access_token_ttl": REFRESHED_TTL, "rotate_refresh_token": True})
    cookie = await signed_in(stack, browser_session)
    session = stack.proxy.app[CODEC].load({c.key: c.value for c in browser_session.cookie_jar
                                           if c.key.startswith("_authproxy")})
    async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
        # The watcher refreshes at expiry: wait for that grant, not a fixed time just past it.
        await wait_until(lambda: stack.idp.count_grants("refresh_token") == 1,
                         timeout=session.expires_at - time.time() + 10)
        assert time.time() >= session.expires_at              # at expiry, not before
        await ws.send_str("after expiry")
        assert (await ws.receive(timeout=10)).data == "after expiry"
        assert stack.idp.count_grants("refresh_token") == 1
    # The browser's old cookie gets the refreshed session (the refresh token was spent once only).
    async with browser_session.get(stack.url + "/page", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200
    assert stack.idp.count_grants("refresh_token") == 1
    assert stack.idp.count_grants("refresh_token", ok=False) == 0


async def test_websockets_off_for_the_upstream_is_403(stack_factory, ws_app, client, browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url, "websockets": False}])
    cookie = await signed_in(stack, browser_session)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(ws_url(stack), headers={"Cookie": cookie})
    assert refused.value.status == 403
    assert ws_app.handshakes == [] and ws_app.plain == ["/"]   # the login's landing page only


async def test_app_refusing_or_unreachable_is_502_before_the_upgrade(stack_factory, ws_app, client, browser_session):
    dead = f"http://127.0.0.1:{free_port()}"
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}, {"path": "/dead", "url": dead}])
    cookie = await signed_in(stack, browser_session)
    for path in ("/refuse", "/dead/ws"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(ws_url(stack, path), headers={"Cookie": cookie, "Accept": "application/json"})
        assert refused.value.status == 502
    assert len(stack.proxy.app[SOCKETS]) == 0


async def test_app_going_away_without_a_close_frame_closes_the_client_with_1014(stack_factory, ws_app, client,
                                                                                 browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}])
    cookie = await signed_in(stack, browser_session)
    async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
        await ws.send_str("ready")
        assert (await ws.receive()).data == "ready"
        ws_app.live[0].transport.abort()                      # the app drops the connection: no close frame
        code, _ = await expect_close(ws, 3)
        assert code == aiohttp.WSCloseCode.BAD_GATEWAY
    await wait_until(lambda: len(stack.proxy.app[SOCKETS]) == 0)


async def test_an_app_on_a_unix_socket(stack_factory, client, browser_session, tmp_path):
    ws_app = await start_ws_app(str(tmp_path / "app.sock"))
    try:
        stack = await stack_factory(upstreams=[{"path": "/chat", "url": ws_app.url, "strip_prefix": True}])
        cookie = await signed_in(stack, browser_session, "/chat/")
        url = URL(ws_url(stack, "/chat//%77s"), encoded=True)             # sent as it is (dot segments: a 400)
        async with client.ws_connect(url, headers={"Cookie": cookie}) as ws:
            await ws.send_bytes(b"over unix")
            assert (await ws.receive()).data == b"over unix"
        assert ws_app.plain == ["/"] and ws_app.paths == ["/ws"]      # normalised, prefix stripped, as for HTTP
    finally:
        await ws_app.runner.cleanup()


def session_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.Handle]:
    """The proxy's SessionTimer callbacks the loop (asyncio's own) still holds, cancelled ones left out."""
    pending = [*loop._scheduled, *loop._ready]  # type: ignore[attr-defined]
    return [h for h in pending
            if not h.cancelled() and isinstance(getattr(h._callback, "__self__", None), SessionTimer)]


async def test_closed_sockets_leave_no_timer_task_or_registration(stack_factory, ws_app, browser_session):
    """Issue 15: while a socket lives its session is watched by one timer handle (no task); once the
    sockets close, no handle, no relay task and no registration is left."""
    count = 200
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}],
                                limits={"websockets_per_session": count})
    cookie = await signed_in(stack, browser_session)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:     # 100 by default
        sockets = await asyncio.gather(*(client.ws_connect(ws_url(stack), headers={"Cookie": cookie})
                                         for _ in range(count)))
        await wait_until(lambda: len(session_timers(loop)) == count)
        assert len(stack.proxy.app[SOCKETS]) == count
        assert not [t for t in asyncio.all_tasks() if "SessionTimer" in t.get_coro().__qualname__]
        await asyncio.gather(*(ws.close() for ws in sockets))
    await wait_until(lambda: len(stack.proxy.app[SOCKETS]) == 0)
    assert session_timers(loop) == []
    assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in ("pump", "SessionTimer._refresh")]
