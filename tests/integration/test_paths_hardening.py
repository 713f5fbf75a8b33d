"""Paths, spellings and what is forwarded without a session, against real servers.

The first test runs the nginx ``auth_request`` setup exactly as ``docs/deployment.md`` writes it (only the
ports and TLS changed) in front of authproxy and an echo app: a request nginx hands to authproxy under
``/oauth2/`` must never come out at the app under another prefix. The rest try each spelling class on
authproxy as the proxy (``proxy/paths.py``): what is refused, what is routed where, and what the app
receives. Requests are written byte for byte on a socket: no client library normalises them first.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path

import aiohttp
import pytest

from proxy.logs import JsonFormatter, TextFormatter
from tests.support.browserless import login_via_http
from tests.support.echo import header_values, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.nginx import start_nginx_http
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict, start_proxy

pytestmark = pytest.mark.integration

DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
IDENTITY_HEADERS = ("Authorization", "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups")


async def send_raw(url: str, target: str, headers: dict[str, str] | None = None,
                   method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request written exactly as given (``target`` unchanged), on its own connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = {name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), parsed, body


def cookie_header(browser: aiohttp.ClientSession) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar)


def documented_nginx_config(port: int, authproxy_port: int, app_port: int) -> str:
    """docs/deployment.md's nginx block with loopback ports and without TLS — nothing else changed."""
    block = re.findall(r"```nginx\n(.*?)```", DEPLOYMENT.read_text(encoding="utf-8"), re.DOTALL)[0]
    assert "listen 443 ssl;" in block and "server 127.0.0.1:4180;" in block and "server 127.0.0.1:8080;" in block
    block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
    block = re.sub(r"\n\s*ssl_certificate(_key)? [^\n]*;", "", block)
    block = block.replace("server 127.0.0.1:4180;", f"server 127.0.0.1:{authproxy_port};")
    return block.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{app_port};")


@pytest.fixture
async def nginx_front(idp_factory):
    """nginx (documented auth_request config) → authproxy → echo app; yields (nginx url, echo, proxy)."""
    nginx_port, proxy_port = free_port(), free_port()
    public = f"http://127.0.0.1:{nginx_port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback",
                                                     post_logout_redirect_uri=public + "/oauth2/signed_out")])
    echo = await start_echo(free_port())
    data = config_dict(port=proxy_port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET)
    data["public_url"] = public                                      # users reach nginx; authproxy is behind it
    proxy = await start_proxy(data)
    nginx = await start_nginx_http(nginx_port, documented_nginx_config(nginx_port, proxy_port,
                                                                       int(echo.url.rsplit(":", 1)[1])))
    try:
        yield public, echo, proxy
    finally:
        await nginx.stop()
        await proxy.close()
        await echo.close()


# The user is signed in (alice: groups staff, alice-group) but not in admins, whom nginx's /admin/ requires.
NGINX_BYPASSES = ["/oauth2/..\\admin/secret", "/oauth2/..%5Cadmin/secret", "/oauth2/..%5cadmin/secret",
                  "/oauth2/%2e%2e%5cadmin/secret", "/oauth2/%2E%2E%5Cadmin/secret", "/oauth2/..;/admin/secret",
                  "/oauth2/start/..;/..;/admin/secret", "/oauth2/..\\..\\admin\\secret"]


async def test_documented_nginx_auth_request_cannot_be_bypassed_through_oauth2(nginx_front):
    public, echo, _ = nginx_front
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as alice:
        result = await login_via_http(alice, public + "/")
        assert result.status == 200 and header_values(json.loads(result.body_text), "X-Forwarded-User") == ["alice"]
        cookie = {"Cookie": cookie_header(alice), "Accept": "application/json"}
    status, _, _ = await send_raw(public, "/admin/secret", cookie)
    assert status == 403                                            # nginx's rule for /admin/ holds ...
    status, _, _ = await send_raw(public, "/oauth2/%2e%2e/admin/secret", cookie)
    assert status == 403                                            # ... and nginx resolves this one itself
    seen = len(echo.seen)
    for target in NGINX_BYPASSES:
        status, _, _ = await send_raw(public, target, cookie)
        assert status == 400, target                                # ... and authproxy refuses the rest
    for target in ("/oauth2/nothing-here", "/oauth2/", "/oauth2/start/x", "/oauth2/admin/secret"):
        status, _, _ = await send_raw(public, target, cookie)
        assert status == 404, target                                # the proxy's namespace, never forwarded
    assert echo.seen[seen:] == []


# -- authproxy as the proxy: spellings against routing and rules --------------------------------


