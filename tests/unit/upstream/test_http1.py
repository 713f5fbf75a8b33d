"""The lean upstream client against tiny raw servers that answer exactly what each test needs."""

import asyncio
import inspect

import aiohttp
import pytest

from proxy.upstream.http1 import (HIGH_WATER, MAX_FIELD_SIZE, MAX_HEADERS, Http1Error, Http1HeadTooLarge, Http1Pool,
                         Http1Timeout, headers_problem, serialize_head)

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def raw_server(answers):
    """A server that reads one request head per answer and writes the answer (bytes, or a callable
    taking the writer); ``None`` closes the connection. Returns the server and the heads it read."""
    heads = []

    async def handle(reader, writer):
        try:
            for answer in answers:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                if answer is None:
                    break
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, heads


def pool_for(server, read_timeout=5.0):
    port = server.sockets[0].getsockname()[1]
    return Http1Pool(host="127.0.0.1", port=port, connect_timeout=2.0, read_timeout=read_timeout)


async def body_of(resp):
    return b"".join([chunk async for chunk in resp.iter_any()])


async def test_content_length_response_and_keep_alive_reuse():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhi"
    server, heads = await raw_server([ok, ok])
    pool = pool_for(server)
    for _ in range(2):
        resp = await pool.request(GET, idempotent=True)
        assert (resp.status, resp.reason) == (200, "OK")
        assert [v for n, v in resp.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
        assert resp.complete_body() == b"hi"
        assert resp.at_eof()
        resp.release()
    assert len(heads) == 2 and len(pool._idle) == 1          # one connection, used twice
    await pool.close()
    server.close()


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


async def test_stale_pooled_connection_is_retried_once():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    server, heads = await raw_server([ok, None])             # answers once, then closes on the next request
    pool = pool_for(server)
    (await pool.request(GET, idempotent=True)).release()
    resp = await pool.request(GET, idempotent=True)          # the pooled one is closed: a new connection
    assert resp.status == 200
    resp.release()
    await pool.close()
    server.close()


async def test_a_non_idempotent_request_is_not_sent_twice():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    server, heads = await raw_server([ok, None])
    pool = pool_for(server)
    (await pool.request(GET, idempotent=True)).release()
    with pytest.raises(Http1Error):
        await pool.request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", idempotent=False)
    assert len(heads) == 2
    await pool.close()
    server.close()


async def test_no_answer_is_a_timeout_and_refused_is_an_error():
    async def silent(writer):
        await asyncio.sleep(1)

    server, _ = await raw_server([silent])
    with pytest.raises(Http1Timeout):
        await pool_for(server, read_timeout=0.1).request(GET, idempotent=True)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(Http1Error):
        await Http1Pool(host="127.0.0.1", port=port, connect_timeout=1, read_timeout=1).request(GET, idempotent=True)


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


async def test_a_connection_paused_by_a_whole_body_is_resumed_when_pooled():
    # A body read whole can end above the high-water mark, with reading paused (several pieces in one read).
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    server, heads = await raw_server([ok, ok])
    pool = pool_for(server, read_timeout=2.0)
    for _ in range(2):
        resp = await pool.request(GET, idempotent=True)
        assert resp.complete_body() == b"hi"
        resp._conn.pause()
        resp.release()
    assert len(heads) == 2
    await pool.close()
    server.close()


def test_serialize_head_rejects_line_breaks_in_fields():
    assert serialize_head("GET", "/a?b", [("Host", "x")]) == b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"
    for bad in ("a\r\nX-Evil: 1", "a\nb", "a\rb"):
        with pytest.raises(ValueError):
            serialize_head("GET", "/", [("X-Test", bad)])


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
