"""What one client may hold of the proxy: time to send a head, idle keep-alive, connections, head sizes.

Real sockets against the in-process proxy served as in production (``server.make_runner``), with short
configured limits so the tests are quick; margins are generous because the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from tests.integration.conftest import Stack, StackFactory
from tests.support.browserless import login_via_http
from tests.support.ports import free_port

SHORT = {"header_timeout": "1s", "keepalive_timeout": "1s"}
PING = b"GET /ping HTTP/1.1\r\nHost: proxy\r\n\r\n"


async def _open(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", stack.proxy.config.listen_port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection; (closed in time, what was read)."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
        return True, data
    except TimeoutError:
        return False, data
    except ConnectionResetError:
        return True, data


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One whole response to /ping (its head and its Content-Length body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.fixture
async def short(stack_factory: StackFactory) -> Stack:
    return await stack_factory(limits=SHORT)


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)
    except (ConnectionError, OSError):
        pass


async def test_a_trickled_first_head_is_cut_at_the_header_timeout(short):
    reader, writer = await _open(short)
    started = time.monotonic()
    trickle = asyncio.create_task(_trickle(writer, PING * 4, 0.2))     # a byte every 0.2 s: never idle
    closed, data = await _closed_within(reader, 6)
    trickle.cancel()
    writer.close()
    assert closed and data == b""                          # closed without an answer, as nginx does
    assert time.monotonic() - started < 4                  # 1 s configured; aiohttp's default was an hour


async def test_a_trickled_later_head_is_cut_too(short):
    reader, writer = await _open(short)
    writer.write(PING)
    assert b" 200 " in await _answer(reader)
    trickle = asyncio.create_task(_trickle(writer, PING * 4, 0.2))
    started = time.monotonic()
    closed, data = await _closed_within(reader, 6)
    trickle.cancel()
    writer.close()
    assert closed and data == b""
    assert time.monotonic() - started < 4


async def test_an_idle_keepalive_connection_is_closed(short):
    reader, writer = await _open(short)
    for _ in range(3):                                     # kept alive while it is used...
        writer.write(PING)
        assert b" 200 " in await _answer(reader)
        await asyncio.sleep(0.4)
    started = time.monotonic()
    closed, data = await _closed_within(reader, 6)         # ...and closed once idle for keepalive_timeout
    writer.close()
    assert closed and data == b""
    assert 0.5 < time.monotonic() - started < 4


async def test_a_slow_but_whole_head_within_the_timeout_is_served(stack_factory):
    stack = await stack_factory(limits={"header_timeout": "3s", "keepalive_timeout": "1s"})
    reader, writer = await _open(stack)
    await _trickle(writer, PING, 1.2 / len(PING))          # the whole head in ~1.2 s < 3 s
    assert b" 200 " in await _answer(reader)
    writer.close()


async def test_a_stalled_request_body_is_cut_at_the_body_timeout(stack_factory):
    stack = await stack_factory(limits={"body_timeout": "1s"}, skip_auth=[{"path": "^/"}])
    reader, writer = await _open(stack)
    writer.write(b"POST /x HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    started = time.monotonic()
    closed, _ = await _closed_within(reader, 8)              # aiohttp's client waited for the rest for good
    writer.close()
    assert closed and time.monotonic() - started < 5
    assert stack.echo.seen == []                              # the app never got a request with a short body


async def test_a_slow_body_that_keeps_coming_is_not_cut(stack_factory):
    stack = await stack_factory(limits={"body_timeout": "1s"}, skip_auth=[{"path": "^/"}])
    reader, writer = await _open(stack)
    writer.write(b"POST /x HTTP/1.1\r\nHost: p\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
    await _trickle(writer, b"12345678", 0.3)                   # 2.4 s in all, never 1 s without a byte
    closed, data = await _closed_within(reader, 8)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 200 ")
    assert [r["body_size"] for r in stack.echo.seen] == [8]


@pytest.fixture
async def three(stack_factory: StackFactory) -> AsyncIterator[Stack]:
    yield await stack_factory(limits={"max_connections": 3, "header_timeout": "30s", "keepalive_timeout": "30s"})


async def test_connections_beyond_the_limit_get_a_503_and_are_closed(three):
    busy = []
    for _ in range(3):                                     # three connections each in the middle of a head
        reader, writer = await _open(three)
        writer.write(PING[:10])
        await writer.drain()
        busy.append((reader, writer))
    await asyncio.sleep(0.2)
    reader, writer = await _open(three)
    closed, data = await _closed_within(reader, 5)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in data
    for reader, writer in busy:                            # the three are untouched: they finish their heads
        writer.write(PING[10:])
        assert b" 200 " in await _answer(reader)
    busy[0][1].close()                                     # one leaves: a new client gets its place
    await asyncio.sleep(0.3)
    reader, writer = await _open(three)
    writer.write(PING)
    assert b" 200 " in await _answer(reader)
    writer.close()
    for _, other in busy[1:]:
        other.close()


async def test_at_the_limit_an_idle_keepalive_connection_makes_room(three):
    idle = []
    for _ in range(3):
        reader, writer = await _open(three)
        writer.write(PING)
        assert b" 200 " in await _answer(reader)
        idle.append((reader, writer))
    reader, writer = await _open(three)
    writer.write(PING)
    assert b" 200 " in await _answer(reader)                 # served, not refused
    closed = [await _closed_within(r, 0.5) for r, _ in idle]
    assert [c for c, _ in closed].count(True) == 1           # one idle connection was closed for it
    for _, w in [*idle, (reader, writer)]:
        w.close()


# -- response heads from the upstream ------------------------------------------------------------------------------


class HeadServer:
    """A misbehaving upstream: reads a request (and its Content-Length body), answers with ``head``."""

    def __init__(self) -> None:
        self.head = b""
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            for line in request.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            writer.write(self.head)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _head(fields: list[tuple[str, str]], status: bytes = b"200 OK") -> bytes:
    lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
    return b"HTTP/1.1 " + status + b"\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


@pytest.fixture
async def head_upstream(stack_factory: StackFactory) -> AsyncIterator[tuple[Stack, HeadServer]]:
    server = HeadServer()
    url = await server.start()
    stack = await stack_factory(upstreams=[{"path": "/", "url": url}], skip_auth=[{"path": "^/"}])
    yield stack, server
    await server.close()


TOO_BIG = {
    "one 4 MiB field": [("X-Huge", "a" * (4 << 20))],
    "a field of 9000 bytes": [("X-Long", "a" * 9000)],
    "200 fields": [(f"X-F{i}", "v") for i in range(200)],
    "70 KiB in 100 fields": [(f"X-F{i}", "v" * 700) for i in range(100)],
}


async def _raw(stack: Stack, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the proxy answers until it closes."""
    reader, writer = await _open(stack)
    writer.write(request)
    closed, data = await _closed_within(reader, 10)
    writer.close()
    assert closed
    return data


@pytest.mark.parametrize("how", ["lean GET", "POST through aiohttp's client", "spliced upload"])
async def test_too_big_a_response_head_is_a_502_never_relayed(head_upstream, how):
    stack, server = head_upstream
    body = {"lean GET": b"", "POST through aiohttp's client": b"x" * 10, "spliced upload": b"x" * (2 << 20)}[how]
    request = (f"{'POST' if body else 'GET'} /x HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    server.head = _head([(f"X-F{i}", "v" * 100) for i in range(100)])         # 10 KiB in 100 fields: fine
    answer = await _raw(stack, request)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"X-F99: " + b"v" * 100 in answer
    for label, fields in TOO_BIG.items():
        server.head = _head(fields)
        started = time.monotonic()
        answer = await _raw(stack, request)
        assert answer.startswith(b"HTTP/1.1 502 "), label
        assert b"X-F1" not in answer and b"X-Huge" not in answer and b"X-Long" not in answer, label
        assert time.monotonic() - started < 3, label


BIG = 32 << 20


@pytest.mark.parametrize("framing", ["chunked: streamed", "Content-Length: spliced"])
async def test_a_client_that_reads_nothing_is_cut_at_the_send_timeout(stack_factory, framing):
    server = HeadServer()
    url = await server.start()
    stack = await stack_factory(upstreams=[{"path": "/", "url": url}], skip_auth=[{"path": "^/"}],
                                limits={"send_timeout": "1s"})
    if framing.startswith("chunked"):
        server.head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % BIG
                       + b"x" * BIG + b"\r\n0\r\n\r\n")
    else:
        server.head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # a client that reads nothing, slowly
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.proxy.config.listen_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    await asyncio.sleep(4)                                           # 1 s configured; aiohttp waited for good
    received = 0
    try:
        async with asyncio.timeout(20):
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
    except ConnectionResetError:
        pass
    writer.close()
    await server.close()
    assert 0 < received < BIG                                        # cut off, not the whole body


async def test_too_big_a_websocket_handshake_answer_is_a_502(head_upstream):
    stack, server = head_upstream
    server.head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"X-Huge: " + b"a" * (4 << 20) + b"\r\n\r\n")
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(stack.url.replace("http", "ws") + "/socket")
        assert refused.value.status == 502
    assert server.requests == 1


# -- WebSockets ----------------------------------------------------------------------------------------------------


class DeflateApp:
    """A WebSocket app that agrees to compression or not; records its handshakes, messages and close codes."""

    def __init__(self, compress: bool) -> None:
        self.compress = compress
        self.offers: list[str | None] = []
        self.negotiated: list[int] = []
        self.sizes: list[int] = []
        self.closes: list[int] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=self.compress, max_msg_size=0)
        if not ws.can_prepare(request).ok:
            return web.Response(text="plain page")
        self.offers.append(request.headers.get("Sec-WebSocket-Extensions"))
        await ws.prepare(request)
        self.negotiated.append(ws.compress)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close "):
                await ws.close(code=int(msg.data.split()[1]))
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.sizes.append(len(msg.data))
                await ws.send_str("got")
        self.closes.append(ws.close_code or 0)
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"


async def _ws_stack(stack_factory: StackFactory, app: DeflateApp, **limits: object) -> Stack:
    return await stack_factory(upstreams=[{"path": "/", "url": await app.start()}], limits=limits,
                               skip_auth=[{"path": "^/open/"}])


def _ws(stack: Stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


@pytest.fixture
async def deflate_apps() -> AsyncIterator[Callable[[bool], DeflateApp]]:
    made: list[DeflateApp] = []

    def make(compress: bool) -> DeflateApp:
        made.append(DeflateApp(compress))
        return made[-1]
    yield make
    for app in made:
        if app.runner is not None:
            await app.runner.cleanup()


async def test_compression_is_agreed_with_the_client_only_as_the_app_agrees(stack_factory, deflate_apps):
    for app_compresses in (False, True):
        app = deflate_apps(app_compresses)
        stack = await _ws_stack(stack_factory, app)
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(_ws(stack, "/open/a"), compress=15) as ws:    # the client offers it
                await ws.send_str("x" * 1000)
                assert (await ws.receive(timeout=5)).data == "got"
                assert bool(ws.compress) is app_compresses
            async with client.ws_connect(_ws(stack, "/open/b"), compress=0) as ws:     # the client does not
                assert not ws.compress
        assert app.offers[0] is not None and "permessage-deflate" in app.offers[0]    # offered on, as the client did
        assert app.offers[1] is None                                                   # never offered unasked
        assert [bool(n) for n in app.negotiated] == [app_compresses, False]
        assert app.sizes == [1000]


async def test_an_inflated_message_beyond_the_limit_never_reaches_the_app(stack_factory, deflate_apps):
    app = deflate_apps(True)
    stack = await _ws_stack(stack_factory, app, websocket_max_message=1 << 20)
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(_ws(stack, "/open/z"), compress=15, max_msg_size=0) as ws:
            assert ws.compress
            await ws.send_bytes(b"\0" * (1 << 20))                   # exactly the limit passes
            assert (await ws.receive(timeout=5)).data == "got"
            await ws.send_bytes(b"\0" * (64 << 20))                  # ~64 KiB on the wire, 64 MiB inflated
            closed = await ws.receive(timeout=10)
            assert closed.type is WSMsgType.CLOSE and closed.data == WSCloseCode.MESSAGE_TOO_BIG
    await _until(lambda: app.closes)
    assert app.sizes == [1 << 20]


async def _until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_close_codes_that_may_not_be_sent_are_never_relayed(stack_factory, deflate_apps):
    app = deflate_apps(False)
    stack = await _ws_stack(stack_factory, app)
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(_ws(stack, "/open/c")) as ws:
            await ws.close(code=1006)                                # RFC 6455 §7.4.1: never sent in a frame
        await _until(lambda: app.closes)
        assert app.closes == [WSCloseCode.GOING_AWAY]
        async with client.ws_connect(_ws(stack, "/open/c")) as ws:
            await ws.send_str("close 1006")                          # the app breaks the rule this time
            closed = await ws.receive(timeout=5)
            assert closed.type is WSMsgType.CLOSE and closed.data == WSCloseCode.BAD_GATEWAY
        async with client.ws_connect(_ws(stack, "/open/c")) as ws:
            await ws.send_str("close 4000")                          # a private code passes as it is
            closed = await ws.receive(timeout=5)
            assert closed.data == 4000


async def test_a_session_may_open_only_so_many_websockets(stack_factory, deflate_apps, browser_session):
    app = deflate_apps(False)
    stack = await _ws_stack(stack_factory, app, websockets_per_session=2)
    assert (await login_via_http(browser_session, stack.url + "/")).status == 200
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser_session.cookie_jar if c.key.startswith("_authproxy"))
    async with aiohttp.ClientSession() as client:
        async def attempt() -> aiohttp.ClientWebSocketResponse | int:
            try:
                return await client.ws_connect(_ws(stack, "/ws"), headers={"Cookie": cookie})
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
        results = await asyncio.gather(*(attempt() for _ in range(6)))     # all at once: the cap still holds
        opened = [r for r in results if not isinstance(r, int)]
        assert len(opened) == 2 and sorted(r for r in results if isinstance(r, int)) == [429] * 4
        assert len(app.offers) == 2                                          # the refused never reached the app
        await opened[0].close()
        await _until(lambda: len(app.closes) == 1)
        again = await attempt()                                              # a place is free again
        assert not isinstance(again, int)
        for ws in (opened[1], again):
            await ws.close()
        async with client.ws_connect(_ws(stack, "/open/x")) as ws:         # no session: not counted
            assert not ws.closed


# -- sizes of what a client sends ----------------------------------------------------------------------------------


async def test_a_request_head_beyond_max_header_size_is_a_431(stack_factory):
    stack = await stack_factory(limits={"max_header_size": 32768})
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(5))        # 40 KB in fields of 8 KB
    answer = await _raw(stack, b"GET /ping HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(3))        # 24 KB: fine
    answer = await _raw(stack, b"GET /ping HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_the_default_head_cap_holds_on_a_kept_alive_connection(stack):
    reader, writer = await _open(stack)
    writer.write(PING)
    assert b" 200 " in await _answer(reader)
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(100))      # 800 KB: was accepted
    writer.write(b"GET /ping HTTP/1.1\r\nHost: p\r\n" + fields + b"\r\n")
    closed, data = await _closed_within(reader, 10)
    writer.close()
    assert closed and data.startswith(b"HTTP/1.1 431 ")
    assert stack.echo.seen == []


async def test_a_body_on_a_connection_being_closed_is_not_taken_for_a_huge_head(stack):
    """The soak (issue 19): at a SIGHUP reload the old listener closes its kept-alive connections, and aiohttp
    then drops the bytes that still come on them unparsed. The head cap counted those bytes (a 2 MiB
    upload's) as a head that never ended and answered 431 to a request that was fine."""
    reader, writer = await _open(stack)
    writer.write(PING)
    assert b" 200 " in await _answer(reader)
    body = b"x" * (200 << 10)
    upload = b"POST /upload HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    (handler,) = stack.proxy.runner.server.connections
    handler.close()                        # what a reload's graceful shutdown does to an idle connection ...
    handler.data_received(upload)          # ... and the next request's bytes, read before it has closed
    closed, data = await _closed_within(reader, 3)
    writer.close()
    assert b"431" not in data, data


async def test_too_many_header_fields_is_a_400(stack):
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    answer = await _raw(stack, b"GET /x HTTP/1.1\r\nHost: p\r\nConnection: close\r\n" + fields + b"\r\n")
    assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 "))
    assert stack.echo.seen == []


async def test_the_proxys_own_endpoints_take_small_bodies_only(stack_factory):
    stack = await stack_factory(backchannel=True)
    url = stack.url + "/oauth2/backchannel_logout"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession() as client:
        async with client.post(url, data=io.BytesIO(b"logout_token=" + b"a" * (100 << 10)), headers=form) as resp:
            assert resp.status == 413 and (await resp.json())["error"] == "invalid_request"
        multipart = aiohttp.FormData({"logout_token": "a.b.c"}, default_to_multipart=True)
        async with client.post(url, data=multipart) as resp:
            assert resp.status == 400 and "x-www-form-urlencoded" in (await resp.json())["error_description"]
        async with client.post(url, data=b"logout_token=a.b.c", headers=form) as resp:          # read, and checked
            assert resp.status == 400 and "malformed" in (await resp.json())["error_description"]
        async with client.get(stack.url + "/oauth2/callback?" + "a=b&" * 3000) as resp:         # a 12 KB query
            assert resp.status in (400, 414)


async def test_an_idle_connection_lets_go_of_its_parser_and_gets_a_new_one_for_its_next_request(stack_factory,
                                                                                               monkeypatch):
    """A kept-alive connection idle over a sweep holds no parser (nor the last request's head in it); one
    with the first bytes of its next request already in keeps its parser, and both answer what comes next."""
    from proxy import connections

    monkeypatch.setattr(connections, "SHED_INTERVAL", 0.05)
    stack = await stack_factory()
    idle_reader, idle = await _open(stack)
    idle.write(PING)
    assert (await _answer(idle_reader)).startswith(b"HTTP/1.1 200")
    busy_reader, busy = await _open(stack)
    busy.write(PING + PING[:12])                           # the next head begun: the parser holds its bytes
    assert (await _answer(busy_reader)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.6)
    handlers = list(stack.proxy.runner.server._connections)   # type: ignore[union-attr]
    assert len(handlers) == 2 and sorted(h._parser is None for h in handlers) == [False, True]
    busy.write(PING[12:])
    idle.write(PING)
    for reader in (busy_reader, idle_reader):
        assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    for writer in (idle, busy):
        writer.close()


def _handlers(stack: Stack) -> list[Any]:
    return list(stack.proxy.runner.server._connections)   # type: ignore[union-attr]


async def _parked_within(stack: Stack, count: int, seconds: float = 3.0) -> list[Any]:
    async with asyncio.timeout(seconds):
        while len(parked := [h for h in _handlers(stack) if h._parked]) < count:
            await asyncio.sleep(0.02)
    return parked


async def test_an_idle_connection_is_parked_without_a_task_or_queue_and_wakes_for_pipelined_requests(
        stack_factory, monkeypatch):
    """Idle over a sweep, a kept-alive connection keeps no ``start`` task, no message queue and no parser;
    its next bytes (two pipelined requests in one write) are both answered, in order, and it parks again."""
    from proxy import connections

    monkeypatch.setattr(connections, "SHED_INTERVAL", 0.05)
    stack = await stack_factory()
    reader, writer = await _open(stack)
    writer.write(PING)
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    (handler,) = await _parked_within(stack, 1)
    assert handler._task_handler is None and handler._messages == () and handler._parser is None
    assert handler not in stack.proxy.runner.server.awake    # type: ignore[union-attr]   # sweeps pass it by
    tasks = {id(t) for t in asyncio.all_tasks()}
    writer.write(PING + PING)
    first, second = await _answer(reader), await _answer(reader)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")
    assert handler._task_handler is not None and id(handler._task_handler) not in tasks
    assert handler in stack.proxy.runner.server.awake        # type: ignore[union-attr]
    assert await _parked_within(stack, 1) == [handler]
    writer.close()


async def test_an_idle_connection_is_parked_within_two_sweeps_of_its_last_answer(stack):
    """Parked late, what an idle connection let go of was scattered among live objects and stayed in RSS
    (9 KiB per connection, bench/idle.py); within a second it is 3.2 KiB."""
    from proxy import connections

    reader, writer = await _open(stack)
    writer.write(PING)
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    await _parked_within(stack, 1, seconds=2 * connections.SHED_INTERVAL + 0.5)
    assert connections.SHED_INTERVAL <= 0.5
    writer.close()


async def test_a_parked_connection_still_closes_at_its_keepalive_timeout(stack_factory, monkeypatch):
    from proxy import connections

    monkeypatch.setattr(connections, "SHED_INTERVAL", 0.05)
    stack = await stack_factory(limits={"header_timeout": "5s", "keepalive_timeout": "1s"})
    reader, writer = await _open(stack)
    writer.write(PING)
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    await _parked_within(stack, 1)
    closed, data = await _closed_within(reader, 3)
    writer.close()
    assert closed and data == b""
    assert _handlers(stack) == []


async def test_a_parked_connection_woken_in_the_same_tick_is_served_once(stack_factory, monkeypatch):
    """Bytes that come between the park and the old ``start`` task's last step: that task ends, the new one
    serves them, once."""
    from proxy import connections

    monkeypatch.setattr(connections, "SHED_INTERVAL", 3600)
    stack = await stack_factory()
    reader, writer = await _open(stack)
    writer.write(PING)
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.1)
    (handler,) = _handlers(stack)
    handler._park()
    assert handler._parked
    handler.data_received(PING)                  # before the old task has run again
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    writer.write(PING)
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    with pytest.raises(TimeoutError):            # nothing answered twice
        await asyncio.wait_for(reader.read(1), 0.3)
    assert not handler._parked and handler._task_handler is not None
    writer.close()


async def test_parked_connections_make_room_at_the_limit_and_close_at_shutdown(stack_factory, monkeypatch):
    from proxy import connections

    monkeypatch.setattr(connections, "SHED_INTERVAL", 0.05)
    stack = await stack_factory(limits={"max_connections": 2, "header_timeout": "30s", "keepalive_timeout": "30s"})
    idle = []
    for _ in range(2):
        reader, writer = await _open(stack)
        writer.write(PING)
        assert b" 200 " in await _answer(reader)
        idle.append((reader, writer))
    await _parked_within(stack, 2)
    reader, writer = await _open(stack)                  # one parked connection is closed for it
    writer.write(PING)
    assert b" 200 " in await _answer(reader)
    assert sum([(await _closed_within(r, 0.5))[0] for r, _ in idle]) == 1
    await _parked_within(stack, 2)
    started = asyncio.get_running_loop().time()
    await stack.proxy.runner.cleanup()                   # type: ignore[union-attr]
    for r in (reader, *[r for r, _ in idle]):
        closed, _ = await _closed_within(r, 2)
        assert closed
    assert asyncio.get_running_loop().time() - started < 3
    for _, w in [*idle, (reader, writer)]:
        w.close()
