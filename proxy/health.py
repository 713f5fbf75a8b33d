"""Liveness and readiness for an orchestrator: ``/ping`` and ``/ready``.

``/ping`` says the process answers HTTP (restart it if not). ``/ready`` says it can serve a signed-in
user: the provider's metadata is loaded (``resources.load_metadata`` keeps trying in the background)
and the session store answers (Redis is reachable) — until then a load balancer should send nobody
here. Both are plain text and never cached, and neither needs a session.
"""

from __future__ import annotations

from aiohttp import web

from .context import PROVIDER
from .pages import NO_STORE
from .session import STORE


async def handle_ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", headers=NO_STORE)


async def handle_ready(request: web.Request) -> web.Response:
    """Ready once the provider's metadata is loaded and the session store answers."""
    if request.app[PROVIDER].metadata is None:
        return web.Response(status=503, text="provider metadata not loaded", headers=NO_STORE)
    if not await request.app[STORE].healthy():
        return web.Response(status=503, text="session store unreachable", headers=NO_STORE)
    return web.Response(text="OK", headers=NO_STORE)
