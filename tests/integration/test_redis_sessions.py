"""The Redis session store end to end: a ticket in the cookie, ciphertext in Redis, and Redis going away."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.support.ports import free_port
from tests.support.redis_server import start_redis

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}


def redis_section(url: str) -> dict:
    return {"store": "redis", "redis": {"url": url, "key_prefix": "ap:", "timeout": "1s", "connect_timeout": "1s"}}


async def redis_dump(url: str) -> bytes:
    client = aioredis.from_url(url)
    try:
        out = b""
        for key in await client.keys("*"):
            kind = await client.type(key)
            value = await client.get(key) if kind == b"string" else b"".join(await client.smembers(key))
            out += key + b"=" + value + b"\n"
        return out
    finally:
        await client.aclose()


async def test_ticket_in_cookie_ciphertext_in_redis(stack_factory, redis_server, browser_session):
    stack = await stack_factory(session=redis_section(redis_server.url))
    result = await login_via_http(browser_session, stack.url + "/page")
    record = json.loads(result.body_text)
    token = header_values(record, "Authorization")[0].removeprefix("Bearer ")
    ticket = next(c.value for c in browser_session.cookie_jar if c.key == "_authproxy")
    assert len(ticket) < 200                                    # a ticket, not a session
    dump = await redis_dump(redis_server.url)
    assert b"ap:s:" in dump
    assert token.encode() not in dump and b"alice" not in dump and ticket.encode() not in dump
    async with browser_session.get(stack.url + "/again", headers=API) as resp:
        assert resp.status == 200 and "Set-Cookie" not in resp.headers
    # Signing out replaces the session in Redis with a tombstone: the old ticket is worthless afterwards.
    async with browser_session.get(stack.url + "/oauth2/sign_out", allow_redirects=False) as resp:
        assert resp.status == 302
    sessions = [line for line in (await redis_dump(redis_server.url)).splitlines() if line.startswith(b"ap:s:")]
    assert len(sessions) == 1 and sessions[0].endswith(b"=ended")
    async with aiohttp.ClientSession() as replay:
        async with replay.get(stack.url + "/x", headers={**API, "Cookie": f"_authproxy={ticket}"}) as resp:
            assert resp.status == 401


async def test_refresh_is_saved_in_redis(stack_factory, redis_server, browser_session):
    stack = await stack_factory(session=redis_section(redis_server.url), idp_options={"access_token_ttl": 2})
    await login_via_http(browser_session, stack.url + "/")
    ticket = next(c.value for c in browser_session.cookie_jar if c.key == "_authproxy")
    await asyncio.sleep(1.3)
    async with browser_session.get(stack.url + "/a", headers=API) as resp:
        new_token = header_values(await resp.json(), "Authorization")[0]
        assert resp.headers.getall("Set-Cookie", []) == []      # the ticket did not change
    async with aiohttp.ClientSession() as other_replica_view:
        async with other_replica_view.get(stack.url + "/b", headers={**API, "Cookie": f"_authproxy={ticket}"}) as resp:
            assert header_values(await resp.json(), "Authorization")[0] == new_token
    assert stack.idp.count_grants("refresh_token") == 1


async def test_redis_down_is_503_and_recovers_without_losing_sessions(stack_factory, browser_session):
    redis = await start_redis(free_port(), persist=True)
    try:
        stack = await stack_factory(session=redis_section(redis.url))
        await login_via_http(browser_session, stack.url + "/")
        await redis.kill()
        for path in ("/while-down", "/again"):
            async with browser_session.get(stack.url + path, headers=API) as resp:
                assert resp.status == 503, await resp.text()
        async with browser_session.get(stack.url + "/while-down", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 503 and "unavailable" in (await resp.text()).lower()
        async with browser_session.get(stack.url + "/ready") as resp:
            assert resp.status == 503
        await redis.start()                                     # same port, same data (append-only file)
        for _ in range(50):
            async with browser_session.get(stack.url + "/ready") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        async with browser_session.get(stack.url + "/after", headers=API) as resp:
            assert resp.status == 200 and (await resp.json())["path"] == "/after"
    finally:
        await redis.stop()


async def test_password_protected_redis(stack_factory, browser_session):
    redis = await start_redis(free_port(), password="s3cret-from-env")
    try:
        wrong = await stack_factory(session={"store": "redis", "redis": {"url": redis.url, "password": "nope"}})
        async with browser_session.get(wrong.url + "/ready") as resp:
            assert resp.status == 503                          # a wrong password is an unreachable store
        stack = await stack_factory(session={"store": "redis", "redis": {"url": redis.url,
                                                                          "password": "s3cret-from-env"}})
        result = await login_via_http(browser_session, stack.url + "/pw")
        assert result.status == 200
        async with browser_session.get(stack.url + "/ready") as resp:
            assert resp.status == 200
    finally:
        await redis.stop()
