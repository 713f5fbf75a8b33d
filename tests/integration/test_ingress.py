"""authproxy behind a real Caddy (Debian's 2.6) in forward_auth mode, serving several hosts on loopback.

Caddy runs the Caddyfile of docs/deployment.md (its global block replaced by the test's, hosts and ports
changed, one site per app host) in front of authproxy and two echo apps: ``app.gw.localhost`` and
``wiki.gw.localhost`` behind the check, ``auth.gw.localhost`` (``public_url``, the one callback) handed to
authproxy whole. The client resolves every ``*.localhost`` name to 127.0.0.1, as chromium does.

The issue this answers (16): behind Caddy a browser without a session got a bare 401 (nobody could sign in),
and any app URL with a query a 400 "unknown parameter", because Caddy passes the original query to the check.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.support.browserless import login_via_http
from tests.support.caddy import CADDY, start_caddy
from tests.support.echo import EchoServer, header_values, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.ports import free_port
from tests.support.proxyrun import RunningProxy, config_dict, start_proxy

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path(CADDY).exists(), reason="caddy is not installed (apt-get install caddy)")]

DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
HTML = {"Accept": "text/html,application/xhtml+xml"}
DOMAIN = "gw.localhost"


class LoopbackResolver(AbstractResolver):
    """``*.localhost`` (and everything else) is 127.0.0.1, as in chromium (RFC 6761 §6.3)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver()),
                                 cookie_jar=aiohttp.CookieJar(unsafe=True))


def documented_caddy_sites(port: int, proxy_port: int, apps: dict[str, int]) -> str:
    """docs/deployment.md's Caddy site, once per app host, plus the sign-in host handed to authproxy."""
    block = re.findall(r"```caddyfile\n(.*?)```", DEPLOYMENT.read_text(encoding="utf-8"), re.DOTALL)[0]
    site = block[block.index("http://app.example.com"):]
    assert "127.0.0.1:4180" in site and "127.0.0.1:8080" in site
    site = site.replace("127.0.0.1:4180", f"127.0.0.1:{proxy_port}")
    sites = [site.replace("http://app.example.com", f"http://{name}.{DOMAIN}:{port}")
             .replace("127.0.0.1:8080", f"127.0.0.1:{app_port}") for name, app_port in apps.items()]
    sites.append(f"http://auth.{DOMAIN}:{port} {{\n\treverse_proxy 127.0.0.1:{proxy_port}\n}}\n")
    return "\n".join(sites)


@dataclass
class Gateway:
    port: int
    public: str
    apps: dict[str, EchoServer]
    proxy: RunningProxy

    def url(self, name: str, target: str = "/") -> str:
        return f"http://{name}.{DOMAIN}:{self.port}{target}"


async def start_gateway(idp_factory: Any, **sections: Any) -> tuple[Gateway, list[Any]]:
    port, proxy_port = free_port(), free_port()
    public = f"http://auth.{DOMAIN}:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback",
                                                     post_logout_redirect_uri=public + "/oauth2/signed_out")])
    apps = {name: await start_echo(free_port()) for name in ("app", "wiki")}
    data = config_dict(port=proxy_port, issuer=idp.issuer, upstream_url=apps["app"].url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET, public_url=public,
                       cookie={"domain": DOMAIN}, trusted_proxies=["127.0.0.1/32"],
                       allowed_hosts=[f"app.{DOMAIN}:{port}", f"wiki.{DOMAIN}:{port}"], **sections)
    proxy = await start_proxy(data)
    caddy = await start_caddy(port, documented_caddy_sites(
        port, proxy_port, {name: int(echo.url.rsplit(":", 1)[1]) for name, echo in apps.items()}))
    return Gateway(port, public, apps, proxy), [caddy, proxy, *apps.values()]


@pytest.fixture
async def gateway(idp_factory) -> AsyncIterator[Gateway]:
    gw, started = await start_gateway(idp_factory)
    try:
        yield gw
    finally:
        for thing in started:
            await (thing.stop() if hasattr(thing, "stop") else thing.close())


def rd_of(location: str, public: str) -> str:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == public + "/oauth2/start", location
    return parse_qs(parts.query)["rd"][0]


async def test_a_page_load_without_a_session_is_sent_to_sign_in_and_back_to_its_own_host(gateway):
    """Was a bare 401 page behind Caddy: nobody could sign in. Now: 302 to sign in at public_url, and after
    the provider, back to the exact URL on the host it started on — its query included (was a 400)."""
    start = gateway.url("app", "/search?q=a%20b&page=2")
    async with browser() as client:
        async with client.get(start, headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302
            assert rd_of(resp.headers["Location"], gateway.public) == start
        result = await login_via_http(client, start)
        assert result.status == 200 and result.visited[-1] == start
        assert any(url.startswith(gateway.public + "/oauth2/callback") for url in result.visited)   # one callback
        record = json.loads(result.body_text)
        assert record["raw_path"] == "/search?q=a%20b&page=2"
        assert header_values(record, "X-Auth-Request-User") == ["alice"]
        assert header_values(record, "X-Auth-Request-Groups") == ["staff,alice-group"]
        # The session cookie sits on the parent domain: the other host sees the same user without signing in.
        assert {c["domain"] for c in client.cookie_jar if c.key == "_authproxy"} == {DOMAIN}
        async with client.get(gateway.url("wiki", "/page?x=1"), headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 200
            wiki = await resp.json()
        assert wiki["raw_path"] == "/page?x=1" and header_values(wiki, "X-Auth-Request-User") == ["alice"]
    assert [r["raw_path"] for r in gateway.apps["wiki"].seen] == ["/page?x=1"]


async def test_a_client_cannot_send_its_own_identity_or_rules_through_caddy(gateway):
    async with browser() as client:
        await login_via_http(client, gateway.url("app", "/"))
        spoof = {"X-Auth-Request-User": "root", "X-Auth-Request-Groups": "admins", "X-Auth-Request-Email": "r@x",
                 "X-Forwarded-Uri": "/elsewhere", "X-Original-URL": "http://evil.example/"}
        async with client.get(gateway.url("app", "/x?allowed_groups=admins&allowed_group=y"),
                              headers={**HTML, **spoof}) as resp:
            assert resp.status == 200                       # the query is the app's, never the check's rules
            record = await resp.json()
    assert header_values(record, "X-Auth-Request-User") == ["alice"]
    assert header_values(record, "X-Auth-Request-Groups") == ["staff,alice-group"]
    assert header_values(record, "X-Auth-Request-Email") == ["alice@example.test"]


async def test_anything_but_a_page_load_gets_a_401_with_the_login_url(gateway):
    async with browser() as client:
        async with client.get(gateway.url("wiki", "/api/items?x=1"),
                              headers={"Accept": "application/json", "Sec-Fetch-Mode": "cors"}) as resp:
            assert resp.status == 401
            body = await resp.json()
        assert rd_of(body["login_url"], gateway.public) == gateway.url("wiki", "/api/items?x=1")
        async with client.post(gateway.url("app", "/form"), headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 401
    assert gateway.apps["app"].seen == [] and gateway.apps["wiki"].seen == []


async def test_sign_in_never_returns_to_a_host_that_is_not_allowed(gateway):
    async with browser() as client:
        for rd in ("http://evil.example/", f"http://other.{DOMAIN}:{gateway.port}/", "//evil.example/",
                   f"http://app.{DOMAIN}:{gateway.port}@evil.example/", f"http://app.{DOMAIN}.evil.example/"):
            result = await login_via_http(client, gateway.public + "/oauth2/start?rd=" + rd)
            assert result.visited[-1] == gateway.public + "/", rd


async def test_a_cookie_tossed_from_a_neighbouring_subdomain_is_nobodys_session(gateway):
    """``cookie.domain`` lets every host under it set cookies there (RFC 6265 §8.6). A sibling host
    (``evil.gw.localhost``, not allowed) plants ``_authproxy`` for the parent domain under a longer path, so the
    browser sends it first: junk, or even the attacker's own valid session. Two values under our name are
    ambiguous and count as no session — the user signs in again; never the attacker's session, never a 500.
    (A sibling can still overwrite or expire the parent-domain cookie itself: only trusted hosts under it.)"""
    async with browser() as mallory:
        await login_via_http(mallory, gateway.url("app", "/"), username="mallory")
        mallorys = next(c.value for c in mallory.cookie_jar if c.key == "_authproxy")
    async with browser() as alice:
        await login_via_http(alice, gateway.url("app", "/"))
        real = next(c.value for c in alice.cookie_jar if c.key == "_authproxy")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver()),
                                     cookie_jar=aiohttp.DummyCookieJar()) as client:
        for value in ("junk", mallorys):
            # What chromium sends once evil.gw.localhost set "_authproxy=<value>; Domain=gw.localhost; Path=/docs":
            # both cookies, the longer path first (RFC 6265 §5.4).
            both = {**HTML, "Cookie": f"_authproxy={value}; _authproxy={real}"}
            async with client.get(gateway.url("app", "/docs/x"), headers=both, allow_redirects=False) as resp:
                assert resp.status == 302                                  # nobody: sign in again
                assert rd_of(resp.headers["Location"], gateway.public) == gateway.url("app", "/docs/x")
            async with client.get(gateway.url("app", "/x"), headers={**HTML, "Cookie": f"_authproxy={real}"}) as resp:
                assert header_values(await resp.json(), "X-Auth-Request-User") == ["alice"]   # hers alone: her
    assert all(header_values(r, "X-Auth-Request-User") != ["mallory"] for r in gateway.apps["app"].seen[1:])


# -- nginx: the documented auth_request configuration tells the check the original request -----------------


async def test_nginx_passes_the_original_request_to_the_check_in_x_original_url(idp_factory):
    """docs/deployment.md's nginx block sets X-Original-URL and X-Original-Method on the check: rules on the
    request's method, path and host see them (they did not before: the check saw only its own path)."""
    from tests.integration.test_paths_hardening import documented_nginx_config
    from tests.support.nginx import start_nginx_http

    nginx_port, proxy_port = free_port(), free_port()
    public = f"http://127.0.0.1:{nginx_port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")])
    echo = await start_echo(free_port())
    data = config_dict(port=proxy_port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET, public_url=public, trusted_proxies=["127.0.0.1/32"],
                       forward_auth={"rule_sets": [{"name": "admins", "allowed_groups": ["admins"]}]},
                       authorization={"rules": [f'!path.startsWith("/secret") && method == "GET" && '
                                                f'host == "127.0.0.1:{nginx_port}"']})
    proxy = await start_proxy(data)
    nginx = await start_nginx_http(nginx_port, documented_nginx_config(nginx_port, proxy_port,
                                                                       int(echo.url.rsplit(":", 1)[1])))
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as alice:
            result = await login_via_http(alice, public + "/open?x=1")
            assert result.status == 200 and json.loads(result.body_text)["raw_path"] == "/open?x=1"
            async with alice.get(public + "/secret/x", headers=HTML) as resp:
                assert resp.status == 403                                   # the path nginx was asked for
            async with alice.post(public + "/open", headers=HTML) as resp:
                assert resp.status == 403                                   # the method
            async with alice.get(public + "/open?allowed_groups=admins", headers=HTML) as resp:
                assert resp.status == 200                                   # a query is never a rule
    finally:
        await nginx.stop()
        await proxy.close()
        await echo.close()


# -- HAProxy (Debian's 2.6) with deploy/haproxy/authproxy.lua ----------------------------------------------------

HAPROXY = "/usr/sbin/haproxy"
LUA = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "authproxy.lua"


def documented_haproxy(port: int, proxy_port: int, app_port: int, lua: Path) -> str:
    """docs/deployment.md's HAProxy configuration, its ports and the script's path changed."""
    text = DEPLOYMENT.read_text(encoding="utf-8")
    block = re.findall(r"```haproxy\n(.*?)```", text, re.DOTALL)[0]
    assert "bind :80" in block and "127.0.0.1:4180" in block and "127.0.0.1:8080" in block
    return (block.replace("/etc/haproxy/authproxy.lua", str(lua)).replace("bind :80", f"bind 127.0.0.1:{port}")
            .replace("127.0.0.1:4180", f"127.0.0.1:{proxy_port}").replace("127.0.0.1:8080", f"127.0.0.1:{app_port}"))


@pytest.fixture
async def haproxy_gateway(idp_factory, tmp_path) -> AsyncIterator[tuple[str, EchoServer]]:
    if not Path(HAPROXY).exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)("haproxy is not installed (apt-get install haproxy)")
    port, proxy_port = free_port(), free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")])
    app = await start_echo(free_port())
    proxy = await start_proxy(config_dict(port=proxy_port, issuer=idp.issuer, upstream_url=app.url,
                                          client_id=CLIENT_ID, client_secret=CLIENT_SECRET, public_url=public,
                                          trusted_proxies=["127.0.0.1/32"]))
    config = tmp_path / "haproxy.cfg"
    config.write_text(documented_haproxy(port, proxy_port, int(app.url.rsplit(":", 1)[1]), LUA))
    proc = await asyncio.create_subprocess_exec(HAPROXY, "-db", "-f", str(config), stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if proc.returncode is not None:
                    raise RuntimeError((await proc.stderr.read()).decode(errors="replace")) from None
                await asyncio.sleep(0.05)
        yield public, app
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await proxy.close()
        await app.close()


async def test_haproxy_with_the_documented_lua_check_signs_in_and_passes_the_identity(haproxy_gateway):
    public, app = haproxy_gateway
    async with browser() as client:
        async with client.get(public + "/notes?x=1", headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302                                    # a page load: sent to sign in
            assert rd_of(resp.headers["Location"], public) == public + "/notes?x=1"
        async with client.get(public + "/api/x", headers={"Accept": "application/json"},
                              allow_redirects=False) as resp:
            assert resp.status == 401                                    # an API call: 401
        result = await login_via_http(client, public + "/notes?x=1")
        assert result.status == 200
        record = json.loads(result.body_text)
        assert record["raw_path"] == "/notes?x=1"
        assert header_values(record, "X-Auth-Request-User") == ["alice"]
        async with client.get(public + "/again", headers={**HTML, "X-Auth-Request-User": "mallory",
                                                          "X-Auth-Request-Groups": "admins"}) as resp:
            record = json.loads(await resp.text())
        assert header_values(record, "X-Auth-Request-User") == ["alice"]   # the client's copies are gone
        assert header_values(record, "X-Auth-Request-Groups") == ["staff,alice-group"]   # the provider's, not "admins"
    async with browser() as stranger:                                    # no session, forged identity
        async with stranger.get(public + "/x", headers={"Accept": "application/json",
                                                        "X-Auth-Request-User": "alice"}) as resp:
            assert resp.status == 401
    assert all(header_values(r, "X-Auth-Request-User") != ["alice"] for r in app.seen[-1:]
               if r["path"] == "/x")
