"""The real app (``create_app``) for in-process unit tests of its handlers, with no network at all.

The provider's endpoints are configured explicitly on a closed loopback port, so its metadata "loads"
without discovery and nothing is ever fetched; the one upstream is that closed port too (a request that
gets through the gate ends in the boundary's 502). The clock is fixed, and ``cookie_for`` seals a
session with the app's own codec, as a signed-in browser would send it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config
from proxy.context import PROVIDER
from proxy.session import CODEC, Session
from tests.unit.conftest import NOW, make_config

CLOSED = "http://127.0.0.1:9"        # the discard port: nothing listens, a connection is refused at once
PROVIDER_SECTION = {"issuer": CLOSED, "authorization_endpoint": f"{CLOSED}/authorize",
                    "token_endpoint": f"{CLOSED}/token", "jwks_uri": f"{CLOSED}/jwks"}


def unit_config(**sections: Any) -> Config:
    """``make_config`` with the provider on the closed port; a ``provider`` section is merged over that."""
    provider = {**PROVIDER_SECTION, **sections.pop("provider", {})}
    return make_config(provider=provider, **sections)


def unit_app(config: Config | None = None) -> web.Application:
    return create_app(config or unit_config(), clock=lambda: NOW)


def cookie_for(app: web.Application, session: Session) -> dict[str, str]:
    """The ``Cookie`` header of a browser holding ``session``."""
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in app[CODEC].dump(session))}


async def metadata_loaded(app: web.Application) -> None:
    """Wait for the background loader (``resources.load_metadata``), which needs no network here."""
    for _ in range(200):
        if app[PROVIDER].metadata is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the provider's metadata was not loaded")
