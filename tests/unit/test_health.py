"""``/ping`` and ``/ready``: alive, and ready only once the provider's metadata and the store are there."""

from __future__ import annotations

from proxy.session import STORE
from tests.support.unit_app import CLOSED, metadata_loaded, unit_app, unit_config


async def test_ping_answers_ok_and_is_never_cached(aiohttp_client):
    client = await aiohttp_client(unit_app())
    response = await client.get("/ping")
    assert (response.status, await response.text()) == (200, "OK")
    assert response.headers["Cache-Control"] == "no-store" and response.headers["X-Request-Id"]


async def test_not_ready_while_the_provider_metadata_is_not_loaded(aiohttp_client):
    """Discovery from the closed port fails for as long as the test runs: never ready, yet alive."""
    config = unit_config(provider={"authorization_endpoint": None, "token_endpoint": None, "jwks_uri": None,
                                   "issuer": CLOSED})
    client = await aiohttp_client(unit_app(config))
    response = await client.get("/ready")
    assert (response.status, await response.text()) == (503, "provider metadata not loaded")
    assert response.headers["Cache-Control"] == "no-store"
    assert (await client.get("/ping")).status == 200


async def test_ready_once_loaded_and_not_while_the_store_is_unreachable(aiohttp_client, monkeypatch):
    app = unit_app()
    client = await aiohttp_client(app)
    await metadata_loaded(app)
    response = await client.get("/ready")
    assert (response.status, await response.text()) == (200, "OK")

    async def unreachable() -> bool:
        return False

    monkeypatch.setattr(app[STORE], "healthy", unreachable)
    response = await client.get("/ready")
    assert (response.status, await response.text()) == (503, "session store unreachable")
