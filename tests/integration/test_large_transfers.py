"""1 GB down and 1 GB up through a real authproxy process: bodies stream, memory stays flat.

The download comes from a real nginx serving a 1 GB (sparse) file; the upload goes to an aiohttp
sink that counts bytes. The proxy's peak resident memory (VmHWM) must stay under 100 MB.
Figures are printed (run with -s) for the closing notes; throughput is measured, not asserted.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import web

from tests.support.browserless import login_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.nginx import start_nginx
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import start_proxy_process

pytestmark = pytest.mark.integration

GIB = 1 << 30
RSS_LIMIT_KIB = 100 * 1024


@pytest.fixture
async def big_stack(idp_factory):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")])
    nginx = await start_nginx(free_port())
    with open(nginx.www / "big.bin", "wb") as fh:
        fh.truncate(GIB)                                      # sparse: no disk, real bytes on the wire
    received = {"bytes": 0}

    async def sink(request: web.Request) -> web.Response:
        async for chunk in request.content.iter_chunked(1 << 20):
            received["bytes"] += len(chunk)
        return web.Response(text=str(received["bytes"]))

    sink_app = web.Application(client_max_size=0)
    sink_app.router.add_post("/upload", sink)
    runner = web.AppRunner(sink_app, access_log=None)
    await runner.setup()
    sink_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    data = config_dict(port=port, issuer=idp.issuer, upstream_url=nginx.url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET,
                       upstreams=[{"path": "/", "url": nginx.url},
                                  {"path": "/upload", "url": f"http://127.0.0.1:{sink_port}"}],
                       logging={"level": "warning"})
    proxy = await start_proxy_process(data)
    try:
        yield proxy, nginx, received
    finally:
        await proxy.stop()
        await nginx.stop()
        await runner.cleanup()


async def _download(client: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    started, total = time.perf_counter(), 0
    async with client.get(url, headers={"Accept": "application/octet-stream"}) as resp:
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == GIB
        async for chunk in resp.content.iter_chunked(1 << 20):
            total += len(chunk)
    return total, time.perf_counter() - started


async def test_one_gigabyte_each_way_with_flat_memory(big_stack):
    proxy, nginx, received = big_stack
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        await login_via_http(client, proxy.url + "/tiny")
        await _download(client, nginx.url + "/big.bin")            # warm nginx and the page cache
        direct_bytes, direct_s = await _download(client, nginx.url + "/big.bin")
        total, proxied_s = await _download(client, proxy.url + "/big.bin")
        assert total == direct_bytes == GIB
        down_rss = proxy.peak_rss_kib()

        block = b"\0" * (1 << 20)

        async def body():
            for _ in range(GIB // len(block)):
                yield block
        started = time.perf_counter()
        async with client.post(proxy.url + "/upload", data=body(), headers={"Accept": "text/plain"}) as resp:
            assert resp.status == 200
            assert int(await resp.text()) == GIB
        up_s = time.perf_counter() - started
    assert received["bytes"] == GIB
    peak = proxy.peak_rss_kib()
    print(f"\n1 GiB download: direct {GIB / direct_s / 1e6:.0f} MB/s,"
          f" through authproxy {GIB / proxied_s / 1e6:.0f} MB/s"
          f" ({direct_s / proxied_s:.2f}x of direct, the client in the same process);"
          f" upload {GIB / up_s / 1e6:.0f} MB/s;"
          f" authproxy peak RSS {down_rss / 1024:.1f} MiB after download, {peak / 1024:.1f} MiB after upload")
    assert peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB"
