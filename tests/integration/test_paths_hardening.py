"""Paths, spellings and what is forwarded without a session, against real servers.

The first test runs the nginx ``auth_request`` setup exactly as ``docs/deployment.md`` writes it (only the
ports and TLS changed) in front of authproxy and an echo app: a request nginx hands to authproxy under
``/oauth2/`` must never come out at the app under another prefix. The rest try each spelling class on
authproxy as the proxy (``proxy/paths.py``): what is refused, what is routed where, and what the app
receives. Requests are written byte for byte on a socket: no client library normalises them first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy.config import LoggingConfig
from proxy.logs import configure_logging
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
    documented = yaml.safe_load(next(b for b in re.findall(r"```yaml\n(listen: .*?)```",
                                                           DEPLOYMENT.read_text(encoding="utf-8"), re.DOTALL)
                                     if "trusted_proxies" in b and "forward_auth" in b))
    data["trusted_proxies"], data["forward_auth"] = documented["trusted_proxies"], documented["forward_auth"]
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
    # ... nginx resolves this one to /admin/ itself, but passes it on as sent: the check's X-Original-URL is
    # refused like the path would be if proxied (400), which nginx answers with a 500
    assert status == 500
    seen = len(echo.seen)
    for target in NGINX_BYPASSES:
        status, _, _ = await send_raw(public, target, cookie)
        assert status == 400, target                                # ... and authproxy refuses the rest
    for target in ("/oauth2/nothing-here", "/oauth2/", "/oauth2/start/x", "/oauth2/admin/secret"):
        status, _, _ = await send_raw(public, target, cookie)
        assert status == 404, target                                # the proxy's namespace, never forwarded
    assert echo.seen[seen:] == []


# -- authproxy as the proxy: spellings against routing and rules --------------------------------


@pytest.fixture
async def apps_factory(stack_factory):
    """``await apps_factory(**config)`` → (stack, main, admin, staff): "/" for anyone signed in (and
    "/public/" for GETs without sign-in); "/admin" for admins, which alice (groups staff, alice-group) is
    not; "/staff" (prefix stripped) for staff, which she is."""
    started = []

    async def factory(**sections):
        main, admin, staff = [await start_echo(free_port()) for _ in range(3)]
        started.extend((main, admin, staff))
        stack = await stack_factory(
            skip_auth=[{"path": "^/public/", "methods": ["GET"]}],
            upstreams=[{"path": "/", "url": main.url},
                       {"path": "/admin", "url": admin.url, "authorization": {"allowed_groups": ["admins"]}},
                       {"path": "/staff", "url": staff.url, "authorization": {"allowed_groups": ["staff"]},
                        "strip_prefix": True}], **sections)
        return stack, main, admin, staff

    yield factory
    for app in started:
        await app.close()


@pytest.fixture
async def two_apps(apps_factory):
    return await apps_factory()


PREFLIGHTS = {"cors": {"allowed_origins": ["http://spa.test"], "allow_preflight": True, "preflight_paths": ["^/api/"]}}


async def signed_in(stack) -> dict[str, str]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as alice:
        result = await login_via_http(alice, stack.url + "/")
        assert result.status == 200
        return {"Cookie": cookie_header(alice), "Accept": "application/json"}


async def test_segment_parameters_never_change_the_upstream_or_its_rules(two_apps):
    """Tomcat and Spring drop ";params": /admin;jsessionid=1/x is /admin/x to them, so it is to the rules."""
    stack, main, admin, staff = two_apps
    alice = await signed_in(stack)
    seen = len(main.seen)
    for target in ("/admin;jsessionid=1/x", "/admin%3Bjsessionid=1/x", "/admin;/x", "/;x/admin/x", "/admin;a;b"):
        status, _, _ = await send_raw(stack.url, target, alice)
        assert status == 403, target
    assert main.seen[seen:] == [] and admin.seen == []
    status, _, body = await send_raw(stack.url, "/staff;jsessionid=1/x;v=2?q=1", alice)
    assert status == 200
    assert json.loads(body)["raw_path"] == "/x;v=2?q=1"                # forwarded as sent, less the prefix
    status, _, _ = await send_raw(stack.url, "/public;x/../admin/x", alice)
    assert status == 400


OVERRIDES = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE", "X-Method-Override": "DELETE",
             "x_http_method_override": "DELETE", "X-Http-Method_Override": "PUT"}


async def test_a_get_rule_never_forwards_a_method_override(two_apps):
    stack, main, _, _ = two_apps
    status, _, body = await send_raw(stack.url, "/public/report", {**OVERRIDES, "Accept": "application/json"})
    assert status == 200
    record = json.loads(body)
    assert record["method"] == "GET"
    assert [name for name, _ in record["headers"] if "method" in name.lower()] == []


async def test_preflights_carry_no_method_override(apps_factory):
    stack, main, _, _ = await apps_factory(**PREFLIGHTS)
    preflight = {**OVERRIDES, "Origin": "http://spa.test", "Access-Control-Request-Method": "DELETE"}
    status, _, body = await send_raw(stack.url, "/api/items/7", preflight, method="OPTIONS")
    assert status == 200
    assert [name for name, _ in json.loads(body)["headers"] if name.lower().replace("_", "-") in
            {"x-http-method-override", "x-http-method", "x-method-override"}] == []


async def test_preflights_reach_only_the_listed_paths(apps_factory):
    stack, main, admin, _ = await apps_factory(**PREFLIGHTS)
    preflight = {"Origin": "http://spa.test", "Access-Control-Request-Method": "DELETE", "Accept": "application/json"}
    seen = len(main.seen)
    for target in ("/admin/users/7", "/", "/apix", "/v1/api/x"):
        status, _, _ = await send_raw(stack.url, target, preflight, method="OPTIONS")
        assert status == 401, target
    assert main.seen[seen:] == [] and admin.seen == []
    status, _, _ = await send_raw(stack.url, "/api;x/items", preflight, method="OPTIONS")
    assert status == 200                                              # matched without segment parameters


async def test_forwarded_host_is_the_public_host_not_the_clients(two_apps):
    stack, main, _, _ = two_apps
    public_host = stack.url.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*public_host.split(":"))
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil2.example\r\n"
                 b"Connection: close\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert header_values(main.seen[-1], "X-Forwarded-Host") == [public_host]


# -- encodings, Unicode and request-target forms (the second round) ------------------------------


REFUSED = [
    "/public/%EF%BC%8E%EF%BC%8E/admin/x",         # fullwidth full stops (IIS: "..")
    "/public/\uff0e\uff0e/admin/x",               # the same, raw UTF-8
    "/public/%EF%BC%8F..%EF%BC%8Fadmin",          # fullwidth solidus
    "/public/..%E2%88%95admin",                   # U+2215 division slash (Windows best-fit: "/")
    "/public/%ef%bc%85%32%65%ef%bc%85%32%65/x",   # fullwidth percent sign
    "/public/%c0%ae%c0%ae/admin/x",               # overlong UTF-8 "."
    "/public/%252e%252e/admin/x",                 # double encoding
    "/public/%255c..%255cadmin",
    "/public/a%00b", "/public/a%00/../admin",     # NUL
    "/public/..%2fadmin/x", "/public%2f..%2fadmin/x", "/public/%2e%2e/admin/x", "/public/./x",
    "/public/..\\admin/x", "/public/..%5Cadmin/x",
]


async def test_ambiguous_encodings_are_refused_before_any_rule(two_apps):
    stack, main, admin, _ = two_apps
    seen = len(main.seen)
    for target in REFUSED:
        status, _, body = await send_raw(stack.url, target, {"Accept": "application/json"})
        assert status == 400, target                  # ours (JSON), or aiohttp's parser's own
    assert main.seen[seen:] == [] and admin.seen == []


async def test_absolute_form_and_double_slashes_are_routed_by_their_path(two_apps):
    """RFC 9112 §3.2.2 absolute-form: the path decides, exactly as in origin-form."""
    stack, main, admin, _ = two_apps
    alice = await signed_in(stack)
    for target in ("http://evil.example/admin/x", "http://127.0.0.1/admin;x/y", "//admin/x", "///admin//x",
                   "/%61dmin/x", "/%61%64%6d%69%6e/x"):
        status, _, _ = await send_raw(stack.url, target, alice)
        assert status == 403, target
    assert admin.seen == []
    status, _, body = await send_raw(stack.url, "http://evil.example/public/x?q=1", {"Accept": "application/json"})
    assert status == 200 and json.loads(body)["raw_path"] == "/public/x?q=1"
    status, _, body = await send_raw(stack.url, "//public//x", {"Accept": "application/json"})
    assert status == 200 and json.loads(body)["raw_path"] == "/public/x"
    status, _, _ = await send_raw(stack.url, "http://evil.example/public/../admin/x", {"Accept": "application/json"})
    assert status == 400
    status, _, _ = await send_raw(stack.url, "//oauth2/start", alice)
    assert status == 404                                              # the proxy's namespace, however spelled
    assert all(not r["raw_path"].startswith("/oauth2") for r in main.seen)


# -- logs ----------------------------------------------------------------------------------------


FORGED = "2026-01-01 00:00:00,000 INFO authproxy.access: GET /admin 200 user=admin"


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_path_cannot_write_forged_log_lines(two_apps, capsys, fmt):
    stack, _, _, _ = two_apps
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    capsys.readouterr()
    configure_logging(LoggingConfig(level="info", format=fmt))
    try:
        for target in ("/public/a%0a" + FORGED.replace(" ", "%20"), "/public/a%0d%0a" + FORGED.replace(" ", "%20"),
                       "/public/a%00%0a" + FORGED.replace(" ", "%20"), "/public/%1b[2Ja%e2%80%a8x"):
            await send_raw(stack.url, target, {"Accept": "application/json"})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert lines and not any(line.startswith("2026-01-01") for line in lines)
    assert not any(c in "".join(lines) for c in "\r\x00\x1b\u2028")
    if fmt == "json":
        entries = [json.loads(line) for line in lines]                # one object per line, every line
        paths = [e["path"] for e in entries if e.get("event") == "request"]
        assert len(paths) == 4 and all("\n" not in p and "\x00" not in p for p in paths)
    else:
        access = [line for line in lines if "authproxy.access:" in line]
        assert len(access) == 4 and all("\\x0a2026-01-01" in line or "\\x1b" in line for line in access)


async def test_no_header_can_point_the_app_at_another_path(two_apps):
    """X-Original-URL and friends make Symfony, Zend and IIS serve another path than the rules checked."""
    stack, main, _, _ = two_apps
    overrides = {"X-Original-URL": "/admin/x", "X-Rewrite-URL": "/admin/x", "X_Original_URL": "/admin/x",
                 "X-Original-URI": "/admin/x", "Accept": "application/json"}
    status, _, body = await send_raw(stack.url, "/public/x", overrides)            # without a session
    assert status == 200 and "/admin/x" not in [value for _, value in json.loads(body)["headers"]]
    alice = await signed_in(stack)
    status, _, body = await send_raw(stack.url, "/home", {**overrides, **alice})   # alice, routed to "/"
    assert status == 200 and "/admin/x" not in [value for _, value in json.loads(body)["headers"]]
