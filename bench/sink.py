"""An upload sink for bench/transfers.py: reads every request body and answers how many bytes it got.

    python bench/sink.py --port N [--unix PATH]
"""

from __future__ import annotations

import argparse

from aiohttp import web

CHUNK = 1 << 20


async def sink(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        received += len(chunk)
    return web.Response(text=str(received))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--unix", metavar="PATH", help="also listen on this unix socket")
    args = parser.parse_args()
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", sink)
    web.run_app(app, host="127.0.0.1", port=args.port, path=args.unix, access_log=None, print=None)
