"""The app behind authproxy in the soak (bench/soak.py): pages, API answers, uploads, downloads, server-sent
events and a WebSocket echo, on a loopback port or a unix socket.

It runs as a process of its own so that the soak can restart it as a real upstream restarts (its open
streams and WebSockets die with it), and so that its work is not done on the soak driver's event loop.

    python bench/soak_upstream.py --port 8001        # or --unix /tmp/soak.sock
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import WSMsgType, web

PAGE = ("<!doctype html><title>soak</title><h1>A page</h1>" + "<p>lorem ipsum dolor sit amet</p>" * 120).encode()
BLOCK = b"d" * 65536


async def page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html")


async def api(request: web.Request) -> web.Response:
    """What the app needs to know: that the proxy sent a token and a user."""
    return web.json_response({"path": request.path, "user": request.headers.get("X-Forwarded-User", ""),
                              "token": request.headers.get("Authorization", "").startswith("Bearer ")})


async def upload(request: web.Request) -> web.Response:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.json_response({"size": size})


async def download(request: web.Request) -> web.StreamResponse:
    left = int(request.query["n"])
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = left
    await resp.prepare(request)
    while left > 0:
        await resp.write(BLOCK[:min(left, len(BLOCK))])
        left -= len(BLOCK)
    return resp


async def sse(request: web.Request) -> web.StreamResponse:
    """``n`` events, one every ``every`` seconds, then the end of the stream."""
    count, every = int(request.query.get("n", "10")), float(request.query.get("every", "0.5"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for i in range(count):
        await resp.write(f"id: {i}\ndata: {json.dumps({'n': i})}\n\n".encode())
        await asyncio.sleep(every)
    await resp.write_eof()
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo every text message until the client (or the proxy) closes."""
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def make_app() -> web.Application:
    app = web.Application(client_max_size=0)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/sse", sse)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/page", page)
    app.router.add_route("*", "/{tail:.*}", api)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--unix")
    args = parser.parse_args()
    if args.port is not None:
        web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None,
                    shutdown_timeout=1.0)
    else:
        web.run_app(make_app(), path=args.unix, access_log=None, print=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
