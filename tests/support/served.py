"""A small aiohttp app of a test's own, served on a free loopback port for as long as a ``with`` lasts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from tests.support.ports import free_port


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """``async with served(app) as url``: ``http://127.0.0.1:<port>``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
