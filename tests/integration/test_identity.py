"""What the app receives, through the whole proxy: header templates and the signed identity assertion.

The real oidc-provider signs the user in; echo upstreams record what they saw. The assertion is checked
as an app would: by the snippet in docs/identity-assertion.md, run as it is written, against the keys the
proxy publishes at /oauth2/jwks.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tests.support.browserless import login_via_http
from tests.support.echo import EchoServer, header_values, start_echo
from tests.support.ports import free_port
from tests.support.proxyrun import COOKIE_SECRET

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "identity-assertion.md"
HEADER = "X-Authproxy-Assertion"
NEW_SECRET = base64.urlsafe_b64encode(b"n" * 32).decode()
CLAIMS = {"realm_access": {"roles": ["admin", "dev"]}, "evil": "x\r\nX-Injected: yes", "tenant": "acme"}
FORGED = {HEADER: "forged.assertion.value", "X_Authproxy_Assertion": "forged", "X-Roles": "root",
          "Remote-User": "root", "remote_user": "root", "X-Evil": "root"}


class DocApp:
    """The Python block of docs/identity-assertion.md, run with this proxy's URL and this app's audience —
    in a thread, as its blocking fetch of the keys would otherwise wait on the event loop the proxy runs on."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    @classmethod
    async def start(cls, authproxy: str, audience: str) -> DocApp:
        return cls(await asyncio.to_thread(_run_snippet, authproxy, audience))

    async def verified_user(self, assertion: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.namespace["verified_user"], assertion)


def _run_snippet(authproxy: str, audience: str) -> dict[str, Any]:
    source = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert source is not None
    code = source[1].replace('"https://auth.example.com"', repr(authproxy), 1)
    code = code.replace('"http://127.0.0.1:8080"', repr(audience), 1)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)      # our own documentation's example, as written
    return namespace


def upstreams(echo: EchoServer) -> list[dict[str, Any]]:
    return [
        {"path": "/", "url": echo.url, "identity_assertion": {"header": HEADER}},
        {"path": "/other", "url": echo.url,
         "identity_assertion": {"header": HEADER, "audience": "urn:other", "lifetime": "30s"},
         "identity_headers": {"preset": "remote-user",
                              "headers": {"X-Roles": "realm_access.roles", "X-Evil": "evil", "X-Tenant": "tenant"}}},
        {"path": "/basic", "url": echo.url, "identity_headers": {"preset": "basic", "pass_access_token": False}},
    ]


def last(echo: EchoServer, path: str) -> dict[str, Any]:
    return [record for record in echo.seen if record["path"] == path][-1]


async def test_each_app_gets_its_template_and_an_assertion_it_verifies_with_the_published_keys(stack_factory):
    echo = await start_echo(free_port())
    try:
        stack = await stack_factory(idp_options={"extra_claims": CLAIMS}, upstreams=upstreams(echo),
                                    skip_auth=[{"path": "^/other/public/"}])
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            assert (await login_via_http(browser, stack.url + "/")).status == 200
            for path in ("/app", "/other/x", "/basic/y"):
                async with browser.get(stack.url + path, headers=FORGED) as resp:
                    assert resp.status == 200
        async with aiohttp.ClientSession() as anyone, anyone.get(stack.url + "/other/public/x", headers=FORGED) as resp:
            assert resp.status == 200            # no session: no identity, and none of the forged one either
        public = last(echo, "/other/public/x")
        assert not {HEADER.lower(), "x-roles", "remote-user", "x-evil", "authorization"} & {
            name.lower().replace("_", "-") for name, _ in public["headers"]}
        async with aiohttp.ClientSession() as anyone, anyone.get(stack.url + "/oauth2/jwks") as resp:
            assert resp.status == 200 and resp.content_type == "application/jwk-set+json"
            assert resp.headers["Cache-Control"] == "public, max-age=300"
            jwks = await resp.json()
        assert [key["kty"] for key in jwks["keys"]] == ["EC"] and "d" not in jwks["keys"][0]

        # The app behind / checks its assertion with the documented code: a real one, the forged ones dropped.
        root = last(echo, "/app")
        assert len(header_values(root, HEADER)) == 1
        app = await DocApp.start(stack.url, echo.url)
        claims = await app.verified_user(header_values(root, HEADER)[0])
        assert claims["sub"] == "alice" and claims["iss"] == stack.url and claims["aud"] == echo.url
        assert claims["email"] == "alice@example.test" and claims["groups"] == ["staff", "alice-group"]
        assert claims["exp"] - claims["iat"] == 60 and claims["exp"] <= time.time() + 60
        assert header_values(root, "X-Forwarded-User") == ["alice"]
        assert header_values(root, "X-Roles") == [] and header_values(root, "Remote-User") == []   # forged: dropped

        # /other: another audience, so its assertion does not pass at / — and its own template.
        other = last(echo, "/other/x")
        other_assertion = header_values(other, HEADER)
        assert len(other_assertion) == 1 and other_assertion != header_values(root, HEADER)
        with pytest.raises(JoseError):
            await app.verified_user(other_assertion[0])
        other_app = await DocApp.start(stack.url, "urn:other")
        assert (await other_app.verified_user(other_assertion[0]))["aud"] == "urn:other"
        assert header_values(other, "Remote-User") == ["alice"] and header_values(other, "X-Roles") == ["admin,dev"]
        assert header_values(other, "X-Tenant") == ["acme"] and header_values(other, "X-Forwarded-User") == []
        assert header_values(other, "X-Evil") == [] and header_values(other, "X-Injected") == []   # CR/LF: not sent
        for record in (root, other, last(echo, "/basic/y")):
            assert "root" not in {value for _, value in record["headers"]}
            assert "forged" not in " ".join(value for _, value in record["headers"])

        # /basic: HTTP basic auth with the user, and no access token at all.
        basic = last(echo, "/basic/y")
        assert header_values(basic, "Authorization") == ["Basic " + base64.b64encode(b"alice:").decode()]
        assert header_values(basic, "X-Forwarded-Access-Token") == [] and header_values(basic, HEADER) == []

        # Rotation: a proxy with a new first secret and the old one second publishes both keys, signs with
        # the new one, and the old proxy's assertions still verify against its set.
        rotated = await stack_factory(cookie={"secret": [NEW_SECRET, COOKIE_SECRET], "secure": False},
                                      upstreams=[{"path": "/", "url": echo.url,
                                                  "identity_assertion": {"header": HEADER}}])
        async with aiohttp.ClientSession() as anyone, anyone.get(rotated.url + "/oauth2/jwks") as resp:
            rotated_keys = (await resp.json())["keys"]
        assert len(rotated_keys) == 2 and rotated_keys[1] == jwks["keys"][0]
        old_token = header_values(root, HEADER)[0]
        assert jwt.decode(old_token, KeySet.import_key_set({"keys": rotated_keys}),
                          algorithms=["ES256"]).claims["sub"] == "alice"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            assert (await login_via_http(browser, rotated.url + "/new")).status == 200
        new_token = header_values(last(echo, "/new"), HEADER)[0]
        assert jwt.decode(new_token, KeySet.import_key_set({"keys": rotated_keys}),
                          algorithms=["ES256"]).header["kid"] == rotated_keys[0]["kid"] != jwks["keys"][0]["kid"]
    finally:
        await echo.close()


async def test_the_websocket_handshake_to_the_app_gets_the_same_headers(stack_factory):
    handshakes: list[dict[str, list[str]]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            return web.Response(text="plain page")
        seen: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            seen.setdefault(name.lower(), []).append(value)
        handshakes.append(seen)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        stack = await stack_factory(upstreams=[{
            "path": "/", "url": f"http://127.0.0.1:{port}", "identity_assertion": {"header": HEADER},
            "identity_headers": {"preset": "x-auth-request", "access_token_header": "X-Auth-Request-Access-Token"}}])
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            assert (await login_via_http(browser, stack.url + "/")).status == 200
            ws_url = stack.url.replace("http://", "ws://") + "/socket"
            async with browser.ws_connect(ws_url, headers=FORGED | {"X-Auth-Request-User": "root"}) as ws:
                await ws.send_str("hi")
                assert (await asyncio.wait_for(ws.receive(), 5)).data == "hi"
        seen = handshakes[-1]
        assert seen["x-auth-request-user"] == ["alice"] and seen["x-auth-request-email"] == ["alice@example.test"]
        assert len(seen["x-auth-request-access-token"]) == 1 and "authorization" not in seen
        assert len(seen[HEADER.lower()]) == 1 and "x_authproxy_assertion" not in seen
        app = await DocApp.start(stack.url, f"http://127.0.0.1:{port}")
        claims = await app.verified_user(seen[HEADER.lower()][0])
        assert claims["sub"] == "alice"
    finally:
        await runner.cleanup()
