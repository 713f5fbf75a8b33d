"""Typed keys for what the app and each request carry (``web.AppKey`` / ``web.RequestKey``).

Keeping them in one small module lets handlers name their dependencies without importing ``app``.
The types are imported for the type checker only: a module that needs a key must not, by importing
this one, import the provider, the refresher and everything below them (the import graph stays shallow).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .config import Config
    from .crypto import Sealer
    from .provider import Provider
    from .refresh import Refresher

CONFIG: web.AppKey[Config] = web.AppKey("authproxy_config")
PROVIDER: web.AppKey[Provider] = web.AppKey("authproxy_provider")
SEALER: web.AppKey[Sealer] = web.AppKey("authproxy_sealer")
REFRESHER: web.AppKey[Refresher] = web.AppKey("authproxy_refresher")
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("authproxy_clock")

REQUEST_ID = web.RequestKey("authproxy_request_id", str)
