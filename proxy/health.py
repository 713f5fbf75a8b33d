"""Liveness and readiness for an orchestrator: ``/ping`` and ``/ready``.

``/ping`` says the process answers HTTP (restart it if not): plain ``OK``. ``/ready`` says it can serve
a signed-in user, and if not, why — JSON naming each check, 200 when all pass, 503 otherwise:

- ``provider_metadata``: the provider's metadata is loaded (``resources.load_metadata`` keeps trying
  in the background);
- ``jwks``: its signing keys are read (loaded after the metadata, for a provider that has a
  ``jwks_uri``; a plain OAuth 2.0 provider has none and this check is left out);
- ``redis``: Redis answers (only with ``session.redis``: the Redis store, or the cookie store's
  denylist in Redis).

Until it is ready a load balancer should send nobody here. The answer names each check's state in a
few fixed words — never an address, a password or an error message, since anyone who reaches the
listener may ask; the log has the details. Neither endpoint needs a session; both are never cached.
``authproxy ping`` prints the answer.
"""

from __future__ import annotations

from aiohttp import web

from .context import CONFIG, PROVIDER
from .pages import NO_STORE, json_answer
from .session import STORE

OK = "ok"


async def handle_ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", headers=NO_STORE)


async def handle_ready(request: web.Request) -> web.Response:
    """200 once every check passes, else 503; each check's state, and the ones not ready, as JSON."""
    checks = await readiness(request.app)
    waiting = [name for name, state in checks.items() if state != OK]
    return json_answer(503 if waiting else 200, {"ready": not waiting, "not_ready": waiting, "checks": checks})


async def readiness(app: web.Application) -> dict[str, str]:
    """Each check that applies, by name: ``ok`` or what is missing."""
    provider = app[PROVIDER]
    metadata = provider.metadata
    checks = {"provider_metadata": OK if metadata is not None else "not loaded yet"}
    if metadata is None:
        checks["jwks"] = "waiting for the provider metadata"
    elif metadata.jwks_uri:
        checks["jwks"] = OK if provider.jwks.keys is not None else "not loaded yet"
    if app[CONFIG].session.redis is not None:
        checks["redis"] = OK if await app[STORE].healthy() else "unreachable"
    return checks
