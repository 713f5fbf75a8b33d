"""The Redis store through Sentinel, through a Redis Cluster and over TLS — real redis-server processes."""

from __future__ import annotations

import json

import pytest

from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.support.ports import free_port, free_port_with_partner
from tests.support.redis_server import start_cluster, start_redis, start_sentinel
from tests.support.tls import self_signed

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}


async def _round_trip(stack, browser_session) -> None:
    result = await login_via_http(browser_session, stack.url + "/topology")
    assert result.status == 200
    assert header_values(json.loads(result.body_text), "X-Forwarded-User") == ["alice"]
    ticket = next(c.value for c in browser_session.cookie_jar if c.key == "_authproxy")
    assert len(ticket) < 200
    async with browser_session.get(stack.url + "/again", headers=API) as resp:
        assert resp.status == 200
    async with browser_session.get(stack.url + "/ready") as resp:
        assert resp.status == 200


async def test_sessions_through_sentinel(stack_factory, redis_server, browser_session):
    sentinel = await start_sentinel(free_port(), redis_server)
    try:
        stack = await stack_factory(session={"store": "redis", "redis": {
            "sentinel_master": "mymaster", "sentinel_urls": [f"redis://127.0.0.1:{sentinel.port}"]}})
        await _round_trip(stack, browser_session)
        import redis.asyncio as aioredis
        direct = aioredis.from_url(redis_server.url)
        try:
            assert await direct.keys("authproxy:s:*")          # the session landed on the monitored master
        finally:
            await direct.aclose()
    finally:
        await sentinel.stop()


async def test_sessions_through_a_cluster(stack_factory, browser_session):
    nodes = await start_cluster([free_port_with_partner(10000) for _ in range(3)])   # bus port = port + 10000
    try:
        stack = await stack_factory(session={"store": "redis", "redis": {
            "url": f"redis://127.0.0.1:{nodes[0].port}", "cluster": True}})
        await _round_trip(stack, browser_session)
    finally:
        for node in nodes:
            await node.stop()


async def test_sessions_over_tls_with_a_private_ca(stack_factory, browser_session, tmp_path):
    """rediss:// with session.redis.ca_file: the session round-trips over TLS and lands in Redis."""
    cert, key = self_signed(tmp_path)
    server = await start_redis(free_port(), tls=(cert, key))
    try:
        stack = await stack_factory(session={"store": "redis", "redis": {"url": server.url, "ca_file": str(cert)}})
        await _round_trip(stack, browser_session)
        import redis.asyncio as aioredis
        direct = aioredis.from_url(server.url, ssl_ca_certs=str(cert))
        try:
            assert await direct.keys("authproxy:s:*")
        finally:
            await direct.aclose()
    finally:
        await server.stop()


async def test_tls_redis_with_an_unknown_ca_is_not_ready(stack_factory, tmp_path):
    """Without ca_file the self-signed certificate is refused: the proxy stays up and says it is not ready."""
    import aiohttp

    cert, key = self_signed(tmp_path)
    server = await start_redis(free_port(), tls=(cert, key))
    try:
        stack = await stack_factory(session={"store": "redis", "redis": {"url": server.url, "timeout": "1s"}})
        async with aiohttp.ClientSession() as client:
            async with client.get(stack.url + "/ready") as resp:
                assert resp.status == 503
            async with client.get(stack.url + "/ping") as resp:
                assert resp.status == 200
    finally:
        await server.stop()
