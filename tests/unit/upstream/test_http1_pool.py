"""The lean upstream client's pool against tiny raw servers: keep-alive reuse, the one safe retry,
timeouts, and the request head it writes."""

import asyncio

import pytest

from proxy.upstream.http1 import Http1Error, Http1Timeout
from proxy.upstream.http1_pool import Http1Pool, serialize_head
from tests.unit.upstream.conftest import GET, pool_for, raw_server


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
