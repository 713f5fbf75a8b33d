"""What one client may hold of the proxy: time to send a head, idle keep-alive, connections, head sizes.

Real sockets against the in-process proxy served as in production (``server.make_runner``), with short
configured limits so the tests are quick; margins are generous because the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import Stack, StackFactory

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
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
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
