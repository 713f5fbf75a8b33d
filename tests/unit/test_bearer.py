"""Bearer passthrough: parsing the Authorization header, signature against the provider's JWKS with the
algorithm allow-list, the iss/aud/exp/nbf checks with an injected clock, and that the token is an access
token (RFC 9068) — never an ID token or a logout token.

A small in-process aiohttp server plays the provider's JWKS endpoint.
"""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from proxy.bearer import BearerRejected, bearer_token, verify_bearer
from proxy.provider import Metadata, Provider
from tests.unit.conftest import make_config

NOW = 1_700_000_000.0
ISS = "https://idp.example.com"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})      # same kid, different key: a forgery


def claims(**changes):
    base = {"iss": ISS, "aud": "cid", "sub": "alice", "exp": NOW + 300, "iat": NOW, "email": "alice@example.com",
            "realm_access": {"roles": ["staff"]}}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(key=KEY, alg="RS256", typ="at+jwt", **changes) -> str:
    header = {"alg": alg, "kid": key.kid}
    if typ is not None:
        header["typ"] = typ
    return jwt.encode(header, claims(**changes), key, default_type=None)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
async def make_provider(aiohttp_server):
    async def jwks(request):
        return web.json_response({"keys": [KEY.as_dict(private=False)]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        def factory(**provider_changes) -> Provider:
            settings = {"issuer": ISS, "client_id": "cid", "client_secret": "csecret",
                        "claims": {"groups": "realm_access.roles"}, "accept_bearer_tokens": True,
                        **provider_changes}
            provider = Provider(make_config(provider=settings).provider, "https://app.example.com/oauth2/callback",
                                http, lambda: NOW)
            provider._metadata = Metadata(issuer=ISS, authorization_endpoint=base + "/auth",
                                          token_endpoint=base + "/token", jwks_uri=base + "/jwks")
            return provider
        yield factory


async def test_valid_token_gives_a_request_only_session(make_provider):
    token = sign()
    session = await verify_bearer(make_provider(), token, now=NOW)
    assert session.access_token == token and session.expires_at == NOW + 300
    assert session.identity.sub == "alice" and session.identity.email == "alice@example.com"
    assert session.identity.groups == ("staff",)                      # the configured claim path
    assert session.refresh_token is None and session.id_token is None


async def test_configured_audiences_replace_the_client_id(make_provider):
    provider = make_provider(bearer_audiences=["api://orders"])
    await verify_bearer(provider, sign(aud=["other", "api://orders"]), now=NOW)
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(provider, sign(aud="cid"), now=NOW)
    assert info.value.code == "aud"


@pytest.mark.parametrize("changes,code", [
    ({"iss": "https://evil.example"}, "iss"),
    ({"iss": None}, "iss"),
    ({"aud": "other"}, "aud"),
    ({"aud": ["other", "x"]}, "aud"),
    ({"aud": None}, "aud"),
    ({"exp": NOW - 61}, "exp"),                   # beyond the 60 s clock skew
    ({"exp": None}, "exp"),
    ({"exp": "tomorrow"}, "exp"),
    ({"nbf": NOW + 120}, "nbf"),
    ({"sub": None}, "sub"),
])
async def test_claim_checks(make_provider, changes, code):
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), sign(**changes), now=NOW)
    assert info.value.code == code


async def test_clock_skew_is_tolerated(make_provider):
    await verify_bearer(make_provider(), sign(exp=NOW - 30, nbf=NOW + 30), now=NOW)


async def test_signature_must_verify_with_the_providers_key(make_provider):
    provider = make_provider()
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(provider, sign(OTHER), now=NOW)
    assert info.value.code == "signature"
    header, _, signature = sign().split(".")
    tampered = f"{header}.{b64(claims(sub='root'))}.{signature}"
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(provider, tampered, now=NOW)
    assert info.value.code == "signature"


async def test_unknown_kid_is_refused(make_provider):
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k9"})
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), sign(stranger), now=NOW)
    assert info.value.code == "kid"


async def test_alg_none_and_hmac_are_refused(make_provider):
    provider = make_provider()
    unsigned = f"{b64({'alg': 'none', 'kid': 'k1'})}.{b64(claims())}."
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(provider, unsigned, now=NOW)
    assert info.value.code == "alg"
    hs = jwt.encode({"alg": "HS256"}, claims(), OctKey.import_key(b"csecret" * 5))
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(provider, hs, now=NOW)
    assert info.value.code == "alg"
    restricted = make_provider(id_token_algorithms=["ES256"])
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(restricted, sign(), now=NOW)
    assert info.value.code == "alg"


@pytest.mark.parametrize("token", ["opaque-access-token", "a.b", "a.b.c.d.e", "###"])
async def test_malformed_tokens_are_refused(make_provider, token):
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), token, now=NOW)
    assert info.value.code in ("malformed", "signature")


async def test_a_list_audience_with_extra_audiences_is_accepted(make_provider):
    await verify_bearer(make_provider(), sign(aud=["x", "cid"]), now=NOW)
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), sign(exp=True), now=NOW)
    assert info.value.code == "exp"


def headers_request(*values: str):
    return make_mocked_request("GET", "/", headers=[("Authorization", v) for v in values])


@pytest.mark.parametrize("values,expected", [
    ((), None),
    (("Basic dXNlcjpwdw==",), None),                      # another scheme: not ours to judge
    (("Bearer abc.def.ghi",), "abc.def.ghi"),
    (("bearer   abc.def-_~+/=",), "abc.def-_~+/="),
])
def test_bearer_token_parsing(values, expected):
    assert bearer_token(headers_request(*values)) == expected


@pytest.mark.parametrize("values", [("Bearer",), ("Bearer a b",), ("Bearer a\"b",),
                                    ("Bearer a.b.c", "Bearer d.e.f"), ("Basic x", "Bearer a.b.c"),
                                    ("Bearer " + "a" * 9000,)])
def test_bad_bearer_headers_are_refused(values):
    with pytest.raises(BearerRejected):
        bearer_token(headers_request(*values))
