"""Run authproxy in-process on a real loopback port, with a config built for the test servers."""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, parse_config
from proxy.server import make_runner

COOKIE_SECRET = base64.urlsafe_b64encode(b"k" * 32).decode()
OTHER_SECRET = base64.urlsafe_b64encode(b"o" * 32).decode()


def config_dict(*, port: int, issuer: str, upstream_url: str, client_id: str, client_secret: str,
                **sections: Any) -> dict[str, Any]:
    """A complete, valid config for a proxy on ``port``; ``sections`` are merged over it (one level deep)."""
    data: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "public_url": f"http://127.0.0.1:{port}",
        "provider": {"issuer": issuer, "client_id": client_id, "client_secret": client_secret,
                     "scopes": ["openid", "email", "profile", "offline_access"],
                     "extra_authorize_params": {"prompt": "consent"}},
        "cookie": {"secret": COOKIE_SECRET, "secure": False},
        "upstreams": [{"path": "/", "url": upstream_url}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = copy.deepcopy(value)
    return data


@dataclass
class RunningProxy:
    url: str
    config: Config
    app: web.Application
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_proxy(data: dict[str, Any], *, clock: Callable[[], float] = time.time,
                      wait_ready: bool = True) -> RunningProxy:
    config = parse_config(data, source="<test>")
    app = create_app(config, clock=clock)
    runner = make_runner(app, config)
    await runner.setup()
    await web.TCPSite(runner, config.listen_host, config.listen_port).start()
    running = RunningProxy(url=config.public_url, config=config, app=app, runner=runner)
    if wait_ready:
        from proxy.context import PROVIDER
        import asyncio
        for _ in range(200):
            if app[PROVIDER].metadata is not None:
                break
            await asyncio.sleep(0.05)
        else:
            await running.close()
            raise RuntimeError("the proxy never loaded the provider's metadata")
    return running
