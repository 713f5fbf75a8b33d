"""Large bodies moved in the kernel (proxy/upstream/splice.py), through a real proxy against a real upstream.

Every body here is a position-dependent pattern, so a lost, repeated or reordered byte changes its hash.
The proxy runs in this process, so the tests can see that ``splice.splice`` really carried the body
(and, for small bodies, that it did not).
"""

from __future__ import annotations

import asyncio
import hashlib
import io

import aiohttp
import pytest
from aiohttp import web

from proxy.upstream import splice
from tests.support.browserless import login_via_http
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

MIB = 1 << 20
API = {"Accept": "application/json"}


def pattern(size: int, offset: int = 0) -> bytes:
    """``size`` bytes of a pattern that differs at every position (a counter, 4 bytes at a time)."""
    first = offset // 4
    words = b"".join(i.to_bytes(4, "big") for i in range(first, first + size // 4 + 2))
    start = offset % 4
    return words[start:start + size]


def digest(size: int) -> str:
    return hashlib.sha256(pattern(size)).hexdigest()


class Upstream:
    """Serves patterned bodies and hashes uploads; can misbehave on request."""

    def __init__(self, socket_path: str) -> None:
        self.received: list[tuple[int, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.socket_path = socket_path                  # the same app on a unix socket too

    async def start(self) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_get("/file", self.file)
        app.router.add_get("/broken", self.broken)
        app.router.add_get("/stall", self.stall)
        app.router.add_post("/sink", self.sink)
        app.router.add_post("/refuse", self.refuse)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        await web.UnixSite(self.runner, self.socket_path).start()
        self.url = f"http://127.0.0.1:{port}"

    async def file(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        for start in range(0, size, 3 * MIB):           # pieces unlike the proxy's: no aligned boundaries
            await resp.write(pattern(min(3 * MIB, size - start), start))
        return resp

    async def broken(self, request: web.Request) -> web.StreamResponse:
        """Promises 4 MiB, sends 1.5 MiB and hangs up."""
        resp = web.StreamResponse()
        resp.content_length = 4 * MIB
        await resp.prepare(request)
        await resp.write(pattern(3 * MIB // 2))
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def stall(self, request: web.Request) -> web.StreamResponse:
        """Promises 4 MiB, sends 1.5 MiB and then nothing for a long time."""
        resp = web.StreamResponse()
        resp.content_length = 4 * MIB
        await resp.prepare(request)
        await resp.write(pattern(3 * MIB // 2))
        await asyncio.sleep(30)
        return resp

    async def sink(self, request: web.Request) -> web.Response:
        h, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            size += len(chunk)
        self.received.append((size, h.hexdigest()))
        return web.json_response({"size": size, "sha256": h.hexdigest(),
                                  "content_length": request.headers.get("Content-Length")})

    async def refuse(self, request: web.Request) -> web.Response:
        """Answers 413 without reading the body, as a server with a size limit does."""
        resp = web.Response(status=413, text="too large")
        resp.force_close()
        return resp

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def upstream(tmp_path):
    up = Upstream(str(tmp_path / "app.sock"))
    await up.start()
    yield up
    await up.close()


@pytest.fixture
def spliced(monkeypatch):
    """The byte counts ``splice.splice`` was asked to move, in order."""
    counts: list[int] = []
    real = splice.splice

    async def counting(source: int, destination: int, count: int, *, read_timeout: float,
                       write_timeout: float | None = None) -> None:
        counts.append(count)
        await real(source, destination, count, read_timeout=read_timeout, write_timeout=write_timeout)

    monkeypatch.setattr(splice, "splice", counting)
    return counts


@pytest.fixture
async def signed_in(stack_factory, upstream, browser_session):
    stack = await stack_factory(upstreams=[
        {"path": "/", "url": upstream.url},
        {"path": "/quick", "url": upstream.url, "timeout": "1s", "strip_prefix": True},
        {"path": "/batched", "url": upstream.url, "flush_interval": "10ms", "strip_prefix": True},
        {"path": "/sock", "url": f"unix:{upstream.socket_path}", "strip_prefix": True},
    ])
    await login_via_http(browser_session, stack.url + "/")
    return stack, browser_session


async def test_large_download_is_spliced_and_arrives_intact(signed_in, spliced):
    stack, client = signed_in
    size = 24 * MIB + 3
    async with client.get(stack.url + f"/file?n={size}", headers=API) as resp:
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == size
        body = await resp.read()
    assert len(body) == size and hashlib.sha256(body).hexdigest() == digest(size)
    assert len(spliced) == 1 and size - 2 * MIB < spliced[0] <= size     # all but what came with the head


async def test_small_and_batched_downloads_are_copied_as_before(signed_in, spliced):
    stack, client = signed_in
    small = splice.SPLICE_MIN - 1
    async with client.get(stack.url + f"/file?n={small}", headers=API) as resp:
        assert hashlib.sha256(await resp.read()).hexdigest() == digest(small)
    async with client.get(stack.url + f"/batched/file?n={4 * MIB}", headers=API) as resp:
        assert hashlib.sha256(await resp.read()).hexdigest() == digest(4 * MIB)
    assert spliced == []


async def test_keep_alive_after_a_spliced_download(signed_in, spliced):
    """The client's connection carries the next request: exactly the body's bytes were spliced."""
    stack, client = signed_in
    opened = []
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(lambda *_: opened.append(1) or asyncio.sleep(0))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), cookie_jar=client.cookie_jar,
                                     trace_configs=[trace]) as one:
        for size in (5 * MIB, 6 * MIB + 1, 100):
            async with one.get(stack.url + f"/file?n={size}", headers=API) as resp:
                assert hashlib.sha256(await resp.read()).hexdigest() == digest(size)
    assert len(opened) == 1 and len(spliced) == 2


async def test_upstream_breaking_off_ends_the_clients_response_early(signed_in, spliced):
    stack, client = signed_in
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(stack.url + "/broken", headers=API) as resp:
            assert resp.status == 200
            await resp.read()
    async with client.get(stack.url + "/file?n=10", headers=API) as resp:   # the proxy carries on
        assert resp.status == 200
    assert len(spliced) == 1


async def test_upstream_stalling_mid_body_is_cut_after_its_timeout(signed_in, spliced):
    stack, client = signed_in
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(stack.url + "/quick/stall", headers=API) as resp:
            await resp.read()
    assert 0.9 < loop.time() - started < 10
    assert len(spliced) == 1


async def test_client_leaving_mid_download_leaves_the_proxy_working(signed_in, spliced):
    stack, client = signed_in
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack.url.rsplit(":", 1)[1]))
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    writer.write(f"GET /file?n={64 * MIB} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
                 f"Cookie: {cookie}\r\n\r\n".encode())
    await reader.readexactly(2 * MIB)
    writer.transport.abort()
    await asyncio.sleep(0.2)
    async with client.get(stack.url + f"/file?n={2 * MIB}", headers=API) as resp:
        assert hashlib.sha256(await resp.read()).hexdigest() == digest(2 * MIB)
    assert len(spliced) == 2


async def test_large_upload_is_spliced_and_arrives_intact(signed_in, upstream, spliced):
    stack, client = signed_in
    size = 20 * MIB + 5
    async with client.post(stack.url + "/sink", data=io.BytesIO(pattern(size)), headers=API) as resp:
        assert resp.status == 200
        answer = await resp.json()
        assert resp.headers.get("Connection", "").lower() == "close"    # aiohttp's parser never saw the end
    assert answer == {"size": size, "sha256": digest(size), "content_length": str(size)}
    assert len(spliced) == 1 and size - 2 * MIB < spliced[0] <= size
    async with client.post(stack.url + "/sink", data=pattern(1000), headers=API) as resp:   # small: copied
        assert (await resp.json())["sha256"] == digest(1000)
    assert len(spliced) == 1


async def test_upload_refused_early_by_the_upstream_gets_its_answer(signed_in, spliced):
    stack, client = signed_in
    async with client.post(stack.url + "/refuse", data=io.BytesIO(pattern(64 * MIB)), headers=API) as resp:
        assert resp.status == 413 and await resp.text() == "too large"
    async with client.post(stack.url + "/sink", data=io.BytesIO(pattern(2 * MIB)), headers=API) as resp:
        assert (await resp.json())["sha256"] == digest(2 * MIB)


async def test_upload_that_breaks_off_is_a_400_and_nothing_reaches_the_app_whole(signed_in, upstream, spliced):
    stack, client = signed_in
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack.url.rsplit(":", 1)[1]))
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    writer.write(f"POST /quick/sink HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nCookie: {cookie}\r\n"
                 f"Content-Length: {8 * MIB}\r\n\r\n".encode() + pattern(3 * MIB))
    answer = await asyncio.wait_for(reader.read(), 10)    # the proxy answers and closes after its 1 s timeout
    assert answer.startswith(b"HTTP/1.1 400 ")
    writer.close()
    await asyncio.sleep(0.1)
    assert all(size == 8 * MIB for size, _ in upstream.received) and len(spliced) == 1


async def test_upload_with_expect_100_continue_is_spliced(signed_in, upstream, spliced):
    """curl's way for large uploads: headers first, the body only after the proxy's 100 Continue."""
    stack, client = signed_in
    size = 6 * MIB + 1
    reader, writer = await asyncio.open_connection("127.0.0.1", int(stack.url.rsplit(":", 1)[1]))
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
    writer.write(f"POST /sink HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nCookie: {cookie}\r\n"
                 f"Expect: 100-continue\r\nContent-Length: {size}\r\n\r\n".encode())
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(pattern(size))
    answer = await asyncio.wait_for(reader.read(), 10)       # the connection closes after a spliced upload
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and digest(size).encode() in answer
    assert len(spliced) == 1 and upstream.received == [(size, digest(size))]


async def test_app_on_a_unix_socket_is_spliced_both_ways(signed_in, upstream, spliced):
    """A sidecar reaching its app through a socket on a shared volume: the fastest way through (see
    bench/transfers.py), so it must take the kernel path both ways and deliver every byte."""
    stack, client = signed_in
    down, up = 9 * MIB + 7, 7 * MIB + 3
    async with client.get(stack.url + f"/sock/file?n={down}", headers=API) as resp:
        assert resp.status == 200
        assert hashlib.sha256(await resp.read()).hexdigest() == digest(down)
    async with client.post(stack.url + "/sock/sink", data=io.BytesIO(pattern(up)), headers=API) as resp:
        assert resp.status == 200
        assert await resp.json() == {"size": up, "sha256": digest(up), "content_length": str(up)}
    assert len(spliced) == 2 and down - 2 * MIB < spliced[0] <= down and up - 2 * MIB < spliced[1] <= up
