"""An upstream that does what legacy apps do: streams, cookies, redirects, odd statuses, slow answers.

Every route records what it received in ``seen`` so tests can assert on the upstream's view.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

from aiohttp import web

GZIPPED = gzip.compress(b"compressed body " * 100)


@dataclass
class RichUpstream:
    url: str
    runner: web.AppRunner
    seen: list[dict] = field(default_factory=list)
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    async def close(self) -> None:
        await self.runner.cleanup()


def _app(up: RichUpstream) -> web.Application:
    def record(request: web.Request, **extra) -> None:
        up.seen.append({"method": request.method, "raw_path": request.raw_path,
                        "headers": [[k, v] for k, v in request.headers.items()], **extra})

    async def echo(request):
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        record(request, body_size=size)
        return web.json_response({"raw_path": request.raw_path, "body_size": size,
                                  "content_length": request.headers.get("Content-Length"),
                                  "transfer_encoding": request.headers.get("Transfer-Encoding"),
                                  "host": request.headers.get("Host")})

    async def sse(request):
        record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await up.events.setdefault("sse-release", asyncio.Event()).wait()
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp

    async def cookies(request):
        resp = web.Response(text="cookies")
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        return resp

    async def own_cookie(request):
        resp = web.Response(text="tries to set the proxy's cookies")
        resp.headers.add("Set-Cookie", "_authproxy=planted; Path=/")
        resp.headers.add("Set-Cookie", "_authproxy_0=planted; Path=/")
        resp.headers.add("Set-Cookie", "app=1; Path=/")
        return resp

    async def redirect(request):
        raise web.HTTPFound("/elsewhere?x=1")

    async def absolute_redirect(request):
        raise web.HTTPMovedPermanently("https://other.example/landing")

    async def gz(request):
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def status(request):
        code = int(request.match_info["code"])
        headers = {"ETag": '"v1"'} if code == 304 else {}
        return web.Response(status=code, headers=headers)

    async def head_or_get(request):
        return web.Response(body=b"x" * 1234, content_type="application/octet-stream")

    async def slow(request):
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def held(request):
        """Answers only when the test sets ``events["held-release"]``; ``events["held-arrived"]`` says the
        request got here. A request kept in flight for as long as the test needs, on any machine."""
        record(request)
        up.events.setdefault("held-arrived", asyncio.Event()).set()
        await up.events.setdefault("held-release", asyncio.Event()).wait()
        return web.Response(text="late")

    async def download(request):
        n = int(request.query["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(request)
        block = b"d" * 65536
        while n > 0:
            await resp.write(block[:min(n, len(block))])
            n -= len(block)
        return resp

    async def endless(request):
        """Streams until the client (the proxy) goes away; records that it noticed."""
        record(request)
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"tick\n")
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            up.events.setdefault("endless-gone", asyncio.Event()).set()
            raise

    async def broken(request):
        """Promises 10000 bytes, sends 100, and drops the connection."""
        resp = web.StreamResponse()
        resp.content_length = 10000
        await resp.prepare(request)
        await resp.write(b"p" * 100)
        request.transport.close()
        return resp

    app = web.Application(client_max_size=0)
    r = app.router
    r.add_get("/sse", sse)
    r.add_get("/cookies", cookies)
    r.add_get("/redirect", redirect)
    r.add_get("/own-cookie", own_cookie)
    r.add_get("/absolute-redirect", absolute_redirect)
    r.add_get("/gzip", gz)
    r.add_get("/status/{code}", status)
    r.add_get("/blob", head_or_get)
    r.add_get("/slow", slow)
    r.add_get("/held", held)
    r.add_get("/download", download)
    r.add_get("/endless", endless)
    r.add_get("/broken", broken)
    r.add_route("*", "/{tail:.*}", echo)
    return app


async def start_rich_upstream(port: int | None = None, *, unix_path: str | None = None) -> RichUpstream:
    up = RichUpstream(url="", runner=None)  # type: ignore[arg-type]
    # auto_decompress=False: bodies are reported as they arrived (a decoded one would hide a proxy that decodes).
    runner = web.AppRunner(_app(up), access_log=None, handler_cancellation=True, auto_decompress=False)
    await runner.setup()
    if unix_path:
        await web.UnixSite(runner, unix_path).start()
        up.url = f"unix:{unix_path}"
    else:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        up.url = f"http://127.0.0.1:{port}"
    up.runner = runner
    return up
