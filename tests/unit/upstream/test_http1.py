"""The lean upstream client's responses against tiny raw servers: framing, streaming, flow control, and
the caps on a response head."""

import asyncio
import inspect

import aiohttp
import pytest

from proxy.upstream.http1 import HIGH_WATER, MAX_FIELD_SIZE, MAX_HEADERS, Http1Error, Http1HeadTooLarge, headers_problem
from tests.unit.upstream.conftest import GET, body_of, pool_for, raw_server


async def test_chunked_body_and_interim_1xx():
    answer = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    server, _ = await raw_server([answer])
    pool = pool_for(server)
    resp = await pool.request(GET, idempotent=True)
    assert resp.status == 200 and ("Link", "</a.css>") not in resp.headers
    assert await body_of(resp) == b"abcde"
    resp.release()
    await pool.close()
    server.close()


async def test_body_until_close():
    server, _ = await raw_server([b"HTTP/1.1 200 OK\r\n\r\nstreamed until the end"])
    pool = pool_for(server)
    resp = await pool.request(GET, idempotent=True)
    assert await body_of(resp) == b"streamed until the end"
    resp.release()
    assert not pool._idle                                      # never reused
    server.close()


async def test_truncated_body_is_an_error():
    server, _ = await raw_server([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"])
    pool = pool_for(server)
    resp = await pool.request(GET, idempotent=True)
    with pytest.raises(Http1Error):
        await body_of(resp)
    resp.close()
    server.close()


async def test_invalid_response_is_an_error():
    server, _ = await raw_server([b"SSH-2.0-OpenSSH\r\n\r\n"])
    with pytest.raises(Http1Error):
        await pool_for(server).request(GET, idempotent=True)
    server.close()


async def test_reading_pauses_above_the_high_water_mark():
    size = 4 * HIGH_WATER

    async def big(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    server, _ = await raw_server([big])
    pool = pool_for(server)
    resp = await pool.request(GET, idempotent=True)
    await asyncio.sleep(0.2)                                   # the consumer is slow: buffering stops
    assert resp._size <= HIGH_WATER + 2 * 65536
    assert len(await body_of(resp)) == size
    resp.release()
    await pool.close()
    server.close()


def _head(fields: list[tuple[str, str]]) -> bytes:
    return (b"HTTP/1.1 200 OK\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in fields)
            + b"Content-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("fields", [
    [("X-Huge", "a" * (8 << 20))],                                  # one field of 8 MiB: cut while it arrives
    [("X-Long", "a" * (MAX_FIELD_SIZE + 1))],
    [(f"X-F{i}", "v") for i in range(MAX_HEADERS + 1)],
    [(f"X-F{i}", "v" * 1000) for i in range(70)],                   # fields fine, the head too big
], ids=["8 MiB field", "long field", "too many fields", "70 KB head"])
async def test_too_big_a_response_head_is_refused(fields):
    server, _ = await raw_server([_head(fields)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Http1HeadTooLarge, match="upstream sent too big header"):
        await pool_for(server).request(GET, idempotent=True)
    assert loop.time() - started < 2                                  # 8 MiB took seconds of CPU before
    server.close()


async def test_a_head_at_the_limits_passes():
    fields = [(f"X-F{i}", "v" * 400) for i in range(MAX_HEADERS - 1)]   # 127 fields, ~52 KB
    server, _ = await raw_server([_head(fields)])
    resp = await pool_for(server).request(GET, idempotent=True)
    assert resp.status == 200 and len(resp.headers) == MAX_HEADERS
    resp.close()
    server.close()


def test_the_caps_are_aiohttps_client_defaults():
    """Both upstream clients refuse the same fields: aiohttp's client (bodies, TLS, WebSockets) has these
    defaults, and relay.py adds the total."""
    defaults = inspect.signature(aiohttp.ClientSession).parameters
    assert defaults["max_field_size"].default == MAX_FIELD_SIZE
    assert defaults["max_line_size"].default == MAX_FIELD_SIZE
    assert defaults["max_headers"].default == MAX_HEADERS
    assert headers_problem("OK", [("X-A", "v" * 1000)] * 70) is not None
    assert headers_problem("OK", [("X-A", "v")] * 10) is None
