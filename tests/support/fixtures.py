"""Pytest fixtures around the real oidc-provider (tests/support/idp.py).

Use them from a test module with `from tests.support.fixtures import idp_factory`, or for every test with
`pytest_plugins = ["tests.support.fixtures"]` in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.support.idp import IdP, start_idp

# The client the proxy under test is registered as.
CLIENT_ID = "authproxy"
CLIENT_SECRET = "authproxy-test-client-secret"

IdPFactory = Callable[..., Awaitable[IdP]]


def client_metadata(
    redirect_uri: str,
    *,
    post_logout_redirect_uri: str | None = None,
    backchannel_logout_uri: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Client metadata (RFC 7591 §2) for CLIENT_ID: a confidential web client using code + refresh_token.

    `extra` adds or overrides fields, e.g. `token_endpoint_auth_method="client_secret_post"`.
    """
    client: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    if post_logout_redirect_uri is not None:
        client["post_logout_redirect_uris"] = [post_logout_redirect_uri]
    if backchannel_logout_uri is not None:
        client["backchannel_logout_uri"] = backchannel_logout_uri
        client["backchannel_logout_session_required"] = True
    client.update(extra)
    return client


@pytest.fixture
async def idp_factory() -> AsyncIterator[IdPFactory]:
    """`await idp_factory(clients=[...], **options)` starts a provider; all are stopped after the test."""
    started: list[IdP] = []

    async def factory(*, clients: list[dict[str, Any]], **options: Any) -> IdP:
        idp = await start_idp(clients=clients, **options)
        started.append(idp)
        return idp

    yield factory
    for idp in started:
        await idp.stop()


@pytest.fixture
async def redis_server():
    """A real redis-server on a free port, without persistence; stopped after the test."""
    from tests.support.ports import free_port
    from tests.support.redis_server import start_redis

    server = await start_redis(free_port())
    yield server
    await server.stop()
