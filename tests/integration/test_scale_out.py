"""Scale-out: three authproxy processes behind a round-robin nginx share sessions in Redis, and a
burst of requests after expiry causes exactly one refresh grant across all of them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.browserless import login_via_http
from tests.support.echo import header_values, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.nginx import start_nginx
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import start_proxy_process

pytestmark = pytest.mark.integration

TTL = 3


async def test_one_refresh_across_three_replicas(idp_factory, redis_server):
    lb_port, ports = free_port(), [free_port() for _ in range(3)]
    public = f"http://127.0.0.1:{lb_port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")], access_token_ttl=TTL,
                            rotate_refresh_token=True)
    echo = await start_echo(free_port())
    replicas, balancer = [], None
    try:
        for port in ports:
            data = config_dict(port=port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                               client_secret=CLIENT_SECRET,
                               session={"store": "redis", "redis": {"url": redis_server.url}},
                               logging={"level": "warning"}, metrics_on_listen=True)
            data["public_url"] = public                          # every replica serves the balancer's URL
            replicas.append(await start_proxy_process(data, direct_url=f"http://127.0.0.1:{port}"))
        balancer = await start_nginx(lb_port, balance=ports)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            first = await login_via_http(browser, public + "/")
            assert first.status == 200
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("_authproxy"))
        old_token = header_values(json.loads(first.body_text), "Authorization")[0]
        await asyncio.sleep(TTL + 0.5)                            # expired everywhere
        seen_before = len(echo.seen)
        connector = aiohttp.TCPConnector(limit=100, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as client:
            async def one(i: int) -> tuple[int, str]:
                async with client.get(f"{public}/burst/{i}", headers={"Accept": "application/json",
                                                                       "Cookie": cookie}) as resp:
                    body = await resp.json() if resp.status == 200 else {}
                    return resp.status, header_values(body, "Authorization")[0] if body else ""
            results = await asyncio.gather(*(one(i) for i in range(100)))
        statuses = [status for status, _ in results]
        assert statuses == [200] * 100, statuses
        tokens = {token for _, token in results}
        assert len(tokens) == 1 and old_token not in tokens
        assert idp.count_grants("refresh_token") == 1
        assert idp.count_grants("refresh_token", ok=False) == 0
        assert len(echo.seen) - seen_before == 100
        # The burst really was spread over the three processes (nginx round-robin): each forwarded some.
        async with aiohttp.ClientSession() as client:
            for port in ports:
                async with client.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                forwarded = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                                if s.name == "authproxy_requests_total" and s.labels.get("upstream") == "/")
                assert forwarded >= 20, (port, forwarded)
    finally:
        if balancer:
            await balancer.stop()
        for replica in replicas:
            assert await replica.stop() == 0
        await echo.close()
