"""A real upstream HTTP server that echoes what it received, started on a free loopback port.

Tests assert on what the app behind the proxy actually saw: the Bearer token, identity headers,
cookies, and the absence of anything the client tried to smuggle in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class EchoServer:
    url: str
    runner: web.AppRunner
    seen: list[dict] = field(default_factory=list)

    async def close(self) -> None:
        await self.runner.cleanup()


def _echo_app(seen: list[dict]) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        record = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": dict(request.query),
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size,
            "peer_port": (request.transport.get_extra_info("peername") or ("", 0))[1] if request.transport else 0,
        }
        seen.append(record)
        if request.path.startswith("/html"):
            html = ("<!doctype html><title>echo</title><h1>Echo</h1>"
                    f"<pre id=user>{request.headers.get('X-Forwarded-User', '')}</pre>"
                    f"<pre id=path>{request.raw_path}</pre>")
            return web.Response(text=html, content_type="text/html")
        return web.json_response(record)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_echo(port: int) -> EchoServer:
    seen: list[dict] = []
    runner = web.AppRunner(_echo_app(seen), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return EchoServer(url=f"http://127.0.0.1:{port}", runner=runner, seen=seen)


def header_values(record: dict, name: str) -> list[str]:
    """Every value the upstream saw for ``name`` (case-insensitive, with "_" spellings)."""
    want = name.lower().replace("_", "-")
    return [v for k, v in record["headers"] if k.lower().replace("_", "-") == want]


__all__ = ["EchoServer", "header_values", "start_echo"]
