"""``/ping`` and ``/ready``: alive; and ready only once the provider's metadata, its JWKS and Redis are
there, with JSON that names what is not."""

from __future__ import annotations

from joserfc.jwk import KeySet

from proxy.context import PROVIDER
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
    assert response.status == 503 and response.headers["Cache-Control"] == "no-store"
    assert await response.json() == {
        "ready": False, "not_ready": ["provider_metadata", "jwks"],
        "checks": {"provider_metadata": "not loaded yet", "jwks": "waiting for the provider metadata"}}
    assert (await client.get("/ping")).status == 200


async def test_not_ready_while_the_jwks_is_not_read_then_ready(aiohttp_client):
    """The explicit endpoints need no network; the JWKS on the closed port cannot be read."""
    app = unit_app()
    client = await aiohttp_client(app)
    await metadata_loaded(app)
    response = await client.get("/ready")
    assert response.status == 503
    assert await response.json() == {"ready": False, "not_ready": ["jwks"],
                                     "checks": {"provider_metadata": "ok", "jwks": "not loaded yet"}}
    app[PROVIDER].jwks.keys = KeySet([])               # as the background loader leaves it once read
    response = await client.get("/ready")
    assert response.status == 200
    assert await response.json() == {"ready": True, "not_ready": [],
                                     "checks": {"provider_metadata": "ok", "jwks": "ok"}}


async def test_a_provider_without_jwks_needs_none(aiohttp_client):
    app = unit_app(unit_config(provider={"jwks_uri": None, "type": "github"}))
    client = await aiohttp_client(app)
    await metadata_loaded(app)
    response = await client.get("/ready")
    assert (response.status, (await response.json())["checks"]) == (200, {"provider_metadata": "ok"})


async def test_redis_is_named_when_it_does_not_answer(aiohttp_client, monkeypatch):
    app = unit_app(unit_config(session={"redis": {"url": "redis://127.0.0.1:9/0", "timeout": "100ms"}}))
    client = await aiohttp_client(app)
    await metadata_loaded(app)
    app[PROVIDER].jwks.keys = KeySet([])
    response = await client.get("/ready")
    assert response.status == 503
    assert await response.json() == {"ready": False, "not_ready": ["redis"],
                                     "checks": {"provider_metadata": "ok", "jwks": "ok", "redis": "unreachable"}}
    assert "127.0.0.1:9" not in await response.text()            # no address for whoever asks

    async def reachable() -> bool:
        return True

    monkeypatch.setattr(app[STORE], "healthy", reachable)
    response = await client.get("/ready")
    assert (response.status, (await response.json())["checks"]["redis"]) == (200, "ok")
