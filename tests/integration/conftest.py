"""The whole gateway against real servers: oidc-provider, an echo upstream, and authproxy, all on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support.echo import EchoServer, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, IdPFactory, client_metadata
from tests.support.idp import IdP
from tests.support.ports import free_port
from tests.support.proxyrun import RunningProxy, config_dict, start_proxy
from tests.support.rich_upstream import RichUpstream, start_rich_upstream


@dataclass
class Stack:
    idp: IdP
    echo: EchoServer
    proxy: RunningProxy

    @property
    def url(self) -> str:
        return self.proxy.url


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack_factory(idp_factory: IdPFactory) -> AsyncIterator[StackFactory]:
    """``await stack_factory(idp_options={...}, client={...}, **config_sections)`` starts all three.

    ``routes``: upstreams before the catch-all ``/``, each a mapping of upstream keys (``path``,
    ``authorization``…) whose ``url`` is the echo server's."""
    started: list[Stack] = []

    async def factory(*, idp_options: dict[str, Any] | None = None, client: dict[str, Any] | None = None,
                      clock: Callable[[], float] | None = None, backchannel: bool = False,
                      routes: list[dict[str, Any]] | None = None, **sections: Any) -> Stack:
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        meta = client_metadata(public + "/oauth2/callback", post_logout_redirect_uri=public + "/oauth2/signed_out",
                               backchannel_logout_uri=public + "/oauth2/backchannel_logout" if backchannel else None,
                               **(client or {}))
        idp = await idp_factory(clients=[meta], **(idp_options or {}))
        echo = await start_echo(free_port())
        if routes is not None:
            sections["upstreams"] = [{**route, "url": echo.url} for route in routes] + [{"path": "/", "url": echo.url}]
        data = config_dict(port=port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                           client_secret=CLIENT_SECRET, **sections)
        kwargs = {"clock": clock} if clock else {}
        proxy = await start_proxy(data, **kwargs)
        stack = Stack(idp=idp, echo=echo, proxy=proxy)
        started.append(stack)
        return stack

    yield factory
    for stack in started:
        await stack.proxy.close()
        await stack.echo.close()


@pytest.fixture
async def rich() -> AsyncIterator[RichUpstream]:
    """The rich upstream (tests/support/rich_upstream.py): streams, slow and held answers, downloads, cookies."""
    upstream = await start_rich_upstream(free_port())
    yield upstream
    upstream.events.setdefault("sse-release", asyncio.Event()).set()      # a test's SSE answer may still wait
    await upstream.close()


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


@pytest.fixture
async def browser_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A cookie-keeping HTTP client for 127.0.0.1 (the default jar ignores IP-address cookies)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session
