"""The test harness itself, without the proxy: the real oidc-provider, the browserless login, the events.

A tiny callback app stands where the proxy will be; the tests build the authorization request by hand
(RFC 6749 §4.1 with RFC 7636 PKCE) and spend the code and refresh tokens at the token endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.browserless import login_via_http, logout_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, IdPFactory, client_metadata, idp_factory
from tests.support.idp import IdP, client_basic_auth, generate_jwks
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

__all__ = ["idp_factory"]  # the fixture, imported for pytest

SCOPE = "openid email profile offline_access"
BASIC = client_basic_auth(CLIENT_ID, CLIENT_SECRET)


@dataclass
class Callback:
    """A stand-in for the proxy: records the queries its callback receives and the logout tokens posted to it."""

    base_url: str
    queries: list[dict[str, str]] = field(default_factory=list)
    logout_tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.base_url}/callback"


@pytest.fixture
async def callback() -> AsyncIterator[Callback]:
    port = free_port()
    recorded = Callback(f"http://127.0.0.1:{port}")

    async def handle_callback(request: web.Request) -> web.Response:
        recorded.queries.append(dict(request.query))
        return web.Response(text="callback reached", content_type="text/html")

    async def handle_backchannel(request: web.Request) -> web.Response:
        recorded.logout_tokens.append(str((await request.post())["logout_token"]))
        return web.Response()

    async def handle_signed_out(request: web.Request) -> web.Response:
        return web.Response(text="signed out", content_type="text/html")

    app = web.Application()
    app.router.add_get("/callback", handle_callback)
    app.router.add_post("/backchannel", handle_backchannel)
    app.router.add_get("/signed-out", handle_signed_out)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield recorded
    await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@dataclass
class Login:
    code: str
    verifier: str
    nonce: str


async def login(idp: IdP, callback: Callback, browser: aiohttp.ClientSession) -> Login:
    """Authorization request by hand, the user logs in as alice; returns the code from the callback."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": callback.url,
        "scope": SCOPE,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "prompt": "consent",  # without it oidc-provider silently drops offline_access (OIDC Core §11)
    }
    result = await login_via_http(browser, f"{idp.issuer}/auth?{urlencode(params)}")

    assert result.status == 200, result.body_text
    assert result.body_text == "callback reached"
    assert any("/interaction/" in url for url in result.visited)
    [query] = callback.queries
    assert query["state"] == state
    assert query["iss"] == idp.issuer  # RFC 9207
    return Login(query["code"], verifier, nonce)


async def token_request(browser: aiohttp.ClientSession, idp: IdP, data: dict[str, str]) -> tuple[int, Any]:
    async with browser.post(f"{idp.issuer}/token", data=data, headers=BASIC) as resp:
        return resp.status, await resp.json()


async def exchange(browser: aiohttp.ClientSession, idp: IdP, callback: Callback, done: Login) -> dict[str, Any]:
    status, tokens = await token_request(
        browser,
        idp,
        {
            "grant_type": "authorization_code",
            "code": done.code,
            "redirect_uri": callback.url,
            "code_verifier": done.verifier,
        },
    )
    assert status == 200, tokens
    return tokens


async def test_login_exchange_refresh_and_introspect(
    idp_factory: IdPFactory, callback: Callback, browser: aiohttp.ClientSession
) -> None:
    idp = await idp_factory(clients=[client_metadata(callback.url)], extra_claims={"department": "eng"})

    done = await login(idp, callback, browser)
    tokens = await exchange(browser, idp, callback, done)

    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert {"access_token", "refresh_token", "id_token"} <= tokens.keys()
    keys = KeySet.import_key_set(await idp.public_jwks())
    claims = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == CLIENT_ID
    assert claims["nonce"] == done.nonce
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["groups"] == ["staff", "alice-group"]
    assert claims["department"] == "eng"
    assert idp.count_grants("authorization_code") == 1

    status, refreshed = await token_request(
        browser, idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )

    assert status == 200, refreshed
    assert idp.count_grants("refresh_token") == 1
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert refreshed["access_token"] != tokens["access_token"]
    introspection = await idp.introspect(refreshed["access_token"], CLIENT_ID, CLIENT_SECRET)
    assert introspection["active"] is True
    assert introspection["sub"] == "alice"


async def test_reused_refresh_token_is_invalid_grant_and_revokes_the_grant(
    idp_factory: IdPFactory, callback: Callback, browser: aiohttp.ClientSession
) -> None:
    idp = await idp_factory(clients=[client_metadata(callback.url)])
    tokens = await exchange(browser, idp, callback, await login(idp, callback, browser))
    spend = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, refreshed = await token_request(browser, idp, spend)
    assert status == 200, refreshed

    status, error = await token_request(browser, idp, spend)

    assert status == 400
    assert error["error"] == "invalid_grant"
    assert idp.count_grants("refresh_token", ok=False) == 1
    assert [e["error"] for e in idp.events() if e["event"] == "grant" and not e["ok"]] == ["invalid_grant"]
    # oidc-provider treats reuse as theft: the whole grant, and the rotated token with it, is revoked.
    assert (await idp.introspect(refreshed["refresh_token"], CLIENT_ID, CLIENT_SECRET))["active"] is False


async def test_userinfo_and_revocation(
    idp_factory: IdPFactory, callback: Callback, browser: aiohttp.ClientSession
) -> None:
    idp = await idp_factory(clients=[client_metadata(callback.url)])
    tokens = await exchange(browser, idp, callback, await login(idp, callback, browser))

    assert (await idp.userinfo(tokens["access_token"]))["preferred_username"] == "alice"
    await idp.revoke(tokens["access_token"], CLIENT_ID, CLIENT_SECRET)
    assert (await idp.introspect(tokens["access_token"], CLIENT_ID, CLIENT_SECRET))["active"] is False


async def test_restart_with_new_jwks_serves_the_new_key_and_keeps_sessions(
    idp_factory: IdPFactory, callback: Callback, browser: aiohttp.ClientSession
) -> None:
    old, new = generate_jwks("RSA", kid="old"), generate_jwks("EC", kid="new")
    idp = await idp_factory(clients=[client_metadata(callback.url)], jwks=old)
    assert [k["kid"] for k in (await idp.public_jwks())["keys"]] == ["old"]
    tokens = await exchange(browser, idp, callback, await login(idp, callback, browser))
    port = idp.port

    await idp.restart(jwks=new)

    served = (await idp.public_jwks())["keys"]
    assert idp.port == port
    assert [(k["kid"], k["kty"]) for k in served] == [("new", "EC")]
    assert all("d" not in k for k in served)  # public parts only
    # The store survived the restart, so the refresh token still works and the ID token uses the new key.
    status, refreshed = await token_request(
        browser, idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert status == 200, refreshed
    header = jwt.decode(refreshed["id_token"], KeySet.import_key_set({"keys": served}), algorithms=["ES256"]).header
    assert header["kid"] == "new"


async def test_logout_confirms_calls_backchannel_and_returns_to_the_client(
    idp_factory: IdPFactory, callback: Callback, browser: aiohttp.ClientSession
) -> None:
    signed_out = f"{callback.base_url}/signed-out"
    client = client_metadata(
        callback.url, post_logout_redirect_uri=signed_out, backchannel_logout_uri=f"{callback.base_url}/backchannel"
    )
    idp = await idp_factory(clients=[client])
    tokens = await exchange(browser, idp, callback, await login(idp, callback, browser))
    query = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": signed_out})

    result = await logout_via_http(browser, f"{idp.issuer}/session/end?{query}")

    assert (result.status, result.body_text, result.url) == (200, "signed out", signed_out)
    event = await idp.wait_for_event("backchannel", ok=True)
    assert event["sub"] == "alice"
    [logout_token] = callback.logout_tokens
    keys = KeySet.import_key_set(await idp.public_jwks())
    claims = jwt.decode(logout_token, keys, algorithms=["RS256"]).claims
    assert claims["sid"] == event["sid"]
    assert "http://schemas.openid.net/event/backchannel-logout" in claims["events"]
