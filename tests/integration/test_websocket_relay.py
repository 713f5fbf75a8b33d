"""The frame relay through the whole proxy, with a raw client that sends what it likes: fragments pass as
fragments, hostile frames end the socket with the right code on both sides, a client that does not read
never makes the proxy buffer what the app sends, and a closed socket leaves no relay, task or timer."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.helpers import websocket_mask

from proxy.upstream.frames import FrameRelay
from proxy.websocket import SOCKETS
from tests.integration.test_websocket import WsApp, start_ws_app
from tests.support.ports import free_port
from tests.support.timing import eventually

pytestmark = pytest.mark.integration

TEXT, BINARY, CONTINUATION, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def frame(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key, body = os.urandom(4), bytearray(payload)
    websocket_mask(key, body)
    return head + key + bytes(body)


class RawClient:
    """A WebSocket client on a bare TCP connection: the handshake, then frames as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, path: str) -> RawClient:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        OPENED.append(writer)
        return cls(reader, writer)

    async def receive(self, timeout: float = 5) -> tuple[int, bool, bytes]:
        """The next frame: opcode, fin, payload (the proxy's frames to a client are never masked)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return b0 & 0x0F, bool(b0 & 0x80), await self.reader.readexactly(n)

    async def closed_with(self) -> tuple[int, str]:
        opcode, _, payload = await self.receive()
        assert opcode == CLOSE
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()


OPENED: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def close_raw_clients() -> AsyncIterator[None]:
    yield
    while OPENED:
        writer = OPENED.pop()
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def ws_app() -> AsyncIterator[WsApp]:
    app = await start_ws_app()
    yield app
    await app.runner.cleanup()


@pytest.fixture
async def stack(stack_factory, ws_app):
    return await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}], skip_auth=[{"path": "^/open/"}],
                               limits={"websocket_max_message": 1 << 20})


def relays() -> list[FrameRelay]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, FrameRelay)]


async def nothing_left(stack) -> None:
    """No socket registered, no relay alive, no close timer scheduled, no task of a relay's."""
    await eventually(lambda: len(stack.proxy.app[SOCKETS]) == 0 and not relays())
    loop = asyncio.get_running_loop()
    assert not [h for h in loop._scheduled if "FrameRelay" in repr(h)]          # type: ignore[attr-defined]
    assert not [t for t in asyncio.all_tasks() if "relay" in t.get_coro().__qualname__.lower()]


async def test_fragments_pings_and_a_close_pass_through(stack, ws_app):
    client = await RawClient.open(stack.url, "/open/frag")
    client.writer.write(frame(TEXT, b"hel", fin=False) + frame(PING, b"?") + frame(CONTINUATION, b"lo"))
    assert await client.receive() == (0xA, True, b"?")            # the app's pong to our ping, between fragments
    assert await client.receive() == (TEXT, True, b"hello")        # the app got one message and echoed it
    client.writer.write(frame(CLOSE, (4003).to_bytes(2, "big") + b"done"))
    assert await client.closed_with() == (4003, "done")
    await eventually(lambda: ws_app.closes == [(4003, "done")])
    await nothing_left(stack)


@pytest.mark.parametrize("data, code", [
    (frame(TEXT, b"x", masked=False), WSCloseCode.PROTOCOL_ERROR),                  # a client must mask
    (frame(BINARY, length=1 << 40)[:14], WSCloseCode.MESSAGE_TOO_BIG),              # a terabyte announced
    (frame(BINARY, b"a" * 60000, fin=False) + frame(CONTINUATION, length=1 << 20)[:14], WSCloseCode.MESSAGE_TOO_BIG),
    (frame(0x3, b"x"), WSCloseCode.PROTOCOL_ERROR),                                 # no such opcode
], ids=["unmasked", "a-terabyte", "fragments-add-up", "unknown-opcode"])
async def test_a_hostile_client_gets_the_error_and_the_app_is_told_it_went_away(stack, ws_app, data, code):
    client = await RawClient.open(stack.url, "/open/hostile")
    client.writer.write(data)
    assert (await client.closed_with())[0] == code
    assert await asyncio.wait_for(client.reader.read(), 5) == b""           # and the proxy hung up
    await eventually(lambda: ws_app.closes == [(WSCloseCode.GOING_AWAY, "client went away")])
    await nothing_left(stack)


async def test_a_client_vanishing_mid_frame_and_the_app_closing(stack, ws_app):
    client = await RawClient.open(stack.url, "/open/gone")
    client.writer.write(frame(BINARY, b"z" * 5000)[:100])                 # half a frame, then gone
    client.writer.transport.abort()
    await eventually(lambda: ws_app.closes == [(WSCloseCode.GOING_AWAY, "client went away")])
    other = await RawClient.open(stack.url, "/open/app-closes")
    other.writer.write(frame(TEXT, b"close 4100 app done"))
    assert await other.closed_with() == (4100, "app done")
    other.writer.write(frame(CLOSE, (4100).to_bytes(2, "big")))
    assert await asyncio.wait_for(other.reader.read(), 5) == b""
    await nothing_left(stack)


class Flood:
    """An app that sends ``count`` binary messages of ``size`` bytes as fast as it may, counting them."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size, self.sent = count, size, 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for _ in range(self.count):
            await ws.send_bytes(b"\x01" * self.size)
            self.sent += 1
        await ws.receive()
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"


async def test_a_client_that_does_not_read_holds_the_app_back_not_the_proxys_memory(stack_factory):
    flood = Flood(count=64, size=1 << 20)                                   # 64 MiB
    stack = await stack_factory(upstreams=[{"path": "/", "url": await flood.start()}],
                                skip_auth=[{"path": "^/open/"}])
    try:
        client = await RawClient.open(stack.url, "/open/flood")
        client.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        await asyncio.sleep(1.5)                                            # the client reads nothing meanwhile
        [relay] = relays()
        held = relay.client.handler.transport.get_write_buffer_size()       # type: ignore[attr-defined]
        assert flood.sent < 32 and held < 8 << 20                           # the app was held back
        del relay
        received = 0
        while received < 64 << 20:
            opcode, fin, payload = await client.receive(timeout=20)
            assert (opcode, fin) == (BINARY, True)
            received += len(payload)
        assert received == 64 << 20 and flood.sent == 64                    # then everything came, in order
        client.writer.write(frame(CLOSE, (1000).to_bytes(2, "big")))
        assert await client.closed_with() == (1000, "")
        await nothing_left(stack)
    finally:
        assert flood.runner is not None
        await flood.runner.cleanup()


async def test_aiohttps_client_and_app_agree_compression_through_the_proxy(stack):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(stack.url.replace("http", "ws") + "/open/z", compress=15) as ws:
            assert ws.compress == 15                                         # the app's answer, passed on
            for text in ("a" * 5000, "b" * 5000, "a" * 5000):               # context taken over between them
                await ws.send_str(text)
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (WSMsgType.TEXT, text)
    await nothing_left(stack)
