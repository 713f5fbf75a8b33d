"""Bearer tokens over HTTP, against a provider whose signing key the test holds (tests/support/evil_idp.py).

Holding the key lets a test mint exactly the token an attacker could get hold of: the provider's own ID token
for this client, a back-channel logout token, a token with a malformed header. Whatever arrives in
``Authorization: Bearer``, the answer is the access token's user — or 401 ``invalid_token`` (RFC 6750 §3.1)
with no detail for the client, one log line naming the check, nothing forwarded, and never a 500.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from joserfc import jwt

from tests.support.echo import header_values
from tests.support.evil_idp import EvilStack, rsa_key, start_evil_stack
from tests.support.fixtures import CLIENT_ID

pytestmark = pytest.mark.integration

API_AUDIENCE = "https://orders.example.test"
EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture
async def stack() -> AsyncIterator[EvilStack]:
    started = await start_evil_stack(provider={"accept_bearer_tokens": True,
                                               "bearer_audiences": [API_AUDIENCE, CLIENT_ID]})
    yield started
    await started.close()


def mint(stack: EvilStack, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token signed with the provider's key: an RFC 9068 access token unless told otherwise."""
    now = int(time.time())
    body = {"iss": stack.idp.issuer, "aud": API_AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now,
            "client_id": CLIENT_ID, "jti": "at-1", "groups": ["staff"], **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "evil-1", "typ": "at+jwt", **(header or {})}, body,
                      rsa_key("evil-1"), default_type=None)


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def call(stack: EvilStack, token: str) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/api/orders", headers={"Accept": "application/json",
                                                                  "Authorization": f"Bearer {token}"}) as resp:
            return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def test_the_providers_access_token_lets_an_api_client_in(stack):
    status, _, record = await call(stack, mint(stack))
    assert status == 200, record
    assert header_values(record, "X-Forwarded-User") == ["alice"]
    assert header_values(record, "X-Forwarded-Groups") == ["staff"]


async def test_id_and_logout_tokens_of_the_provider_are_refused(stack, caplog):
    """The ID token is exactly what the provider issued at sign-in (aud = client id, which is among the accepted
    audiences); the logout token is what it would post to /oauth2/backchannel_logout."""
    caplog.set_level(logging.INFO, logger="authproxy")
    id_token = stack.idp.id_token("alice", "a-nonce")
    logout = mint(stack, {"typ": "logout+jwt"}, aud=CLIENT_ID, exp=None, sid="s1", events={EVENT: {}})
    logout_untyped = mint(stack, {"typ": "JWT"}, aud=CLIENT_ID, sid="s1", events={EVENT: {}})
    for token, code in ((id_token, "typ"), (logout, "typ"), (logout_untyped, "typ")):
        status, headers, body = await call(stack, token)
        assert status == 401, body
        assert headers["WWW-Authenticate"] == 'Bearer realm="authproxy", error="invalid_token"'
        assert body["error"] == "invalid_token" and code not in json.dumps(body)   # the detail stays in the log
        assert any(f"bearer token refused: {code} rid={body['request_id']}" in r.getMessage()
                   for r in caplog.records)
    assert stack.echo.seen == []


MALFORMED_HEADERS = {
    "kid-list": {"alg": "RS256", "kid": ["evil-1"], "typ": "at+jwt"},
    "kid-object": {"alg": "RS256", "kid": {"evil-1": True}, "typ": "at+jwt"},
    "alg-list": {"alg": ["RS256"], "kid": "evil-1"},
    "typ-number": {"alg": "RS256", "kid": "evil-1", "typ": 9068},
    "crit": {"alg": "RS256", "kid": "evil-1", "typ": "at+jwt", "crit": ["exp"], "exp": 1},
    "jku": {"alg": "RS256", "kid": "evil-1", "typ": "at+jwt", "jku": "http://127.0.0.1:1/jwks"},
    "x5u": {"alg": "RS256", "kid": "evil-1", "typ": "at+jwt", "x5u": "http://127.0.0.1:1/cert"},
    "jwk": {"alg": "RS256", "typ": "at+jwt", "jwk": rsa_key("evil-attacker").as_dict(private=False)},
    "header-list": ["RS256"],
}


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
async def test_a_malformed_header_is_invalid_token_not_a_500(stack, name):
    """A kid list was a TypeError in the JWKS lookup: a 500 with a traceback. The signature below is the
    provider's real one for a valid token, so only the header is wrong."""
    _, payload, signature = mint(stack).split(".")
    status, headers, body = await call(stack, f"{b64(MALFORMED_HEADERS[name])}.{payload}.{signature}")
    assert status == 401, body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert stack.echo.seen == []


async def test_a_token_with_its_own_key_is_refused_even_when_signed_with_it(stack):
    """An embedded jwk (or a jku/x5u URL) never chooses the key: a token signed by the attacker's own key
    and carrying it, for a kid the provider uses, is refused."""
    attacker = rsa_key("evil-attacker")
    now = int(time.time())
    token = jwt.encode({"alg": "RS256", "kid": "evil-1", "typ": "at+jwt", "jwk": attacker.as_dict(private=False)},
                       {"iss": stack.idp.issuer, "aud": API_AUDIENCE, "sub": "root", "exp": now + 60, "iat": now},
                       attacker, default_type=None)
    status, _, body = await call(stack, token)
    assert status == 401, body
    assert stack.echo.seen == []


@pytest.mark.parametrize("name", ["kid-list", "kid-object", "header-list", "jku"])
async def test_a_malformed_logout_token_is_a_400_not_a_500(stack, name):
    """Back-Channel Logout 1.0 §2.8: a logout token that fails validation is a 400 with an OAuth error body."""
    _, payload, signature = mint(stack, {"typ": "logout+jwt"}, aud=CLIENT_ID, sid="s1", events={EVENT: {}}).split(".")
    token = f"{b64(MALFORMED_HEADERS[name])}.{payload}.{signature}"
    async with aiohttp.ClientSession() as client:
        async with client.post(stack.url + "/oauth2/backchannel_logout", data={"logout_token": token}) as resp:
            assert resp.status == 400, await resp.text()
            assert (await resp.json())["error"] == "invalid_request"
