"""Typed keys for what the app and each request carry (``web.AppKey`` / ``web.RequestKey``).

Keeping them in one small module lets handlers name their dependencies without importing ``app``.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from .config import Config
from .crypto import Sealer
from .provider import Provider
from .refresh import Refresher

CONFIG = web.AppKey("authproxy_config", Config)
PROVIDER = web.AppKey("authproxy_provider", Provider)
SEALER = web.AppKey("authproxy_sealer", Sealer)
REFRESHER = web.AppKey("authproxy_refresher", Refresher)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("authproxy_clock")

REQUEST_ID = web.RequestKey("authproxy_request_id", str)
