"""Bearer passthrough: parsing the Authorization header, signature against the provider's JWKS with the
algorithm allow-list, the iss/aud/exp/nbf checks with an injected clock, and that the token is an access
token (RFC 9068) — never an ID token or a logout token.

A small in-process aiohttp server plays the provider's JWKS endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from proxy.bearer import bearer_token, verify_bearer
from proxy.errors import BearerRejected
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


# -- an access token, and nothing else (RFC 9068 §4; issue 13) -----------------------------------------

from joserfc.jwk import ECKey  # noqa: E402

from proxy.errors import ConfigError  # noqa: E402
from proxy.tokens import BACKCHANNEL_EVENT  # noqa: E402

EC = ECKey.generate_key("P-256", parameters={"kid": "k1"})      # the RSA key's kid on an EC key


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
async def test_rfc9068_typ_is_accepted_in_every_spelling(make_provider, typ):
    await verify_bearer(make_provider(), sign(typ=typ), now=NOW)


@pytest.mark.parametrize("typ", ["JWT", None, "logout+jwt", "application/logout+jwt", "id_token+jwt", "jose"])
async def test_a_token_not_typed_as_an_access_token_is_refused_by_default(make_provider, typ):
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), sign(typ=typ), now=NOW)
    assert info.value.code == "typ"


async def test_bearer_token_types_admits_providers_that_do_not_type_their_access_tokens(make_provider):
    keycloak = make_provider(bearer_token_types=["at+jwt", "JWT"], bearer_audiences=["cid"])
    await verify_bearer(keycloak, sign(typ="JWT"), now=NOW)
    await verify_bearer(keycloak, sign(typ="application/jwt"), now=NOW)
    with pytest.raises(BearerRejected):
        await verify_bearer(keycloak, sign(typ=None), now=NOW)
    okta = make_provider(bearer_token_types=[""], bearer_audiences=["cid"])   # "" = no typ header at all
    await verify_bearer(okta, sign(typ=None), now=NOW)
    with pytest.raises(BearerRejected):
        await verify_bearer(okta, sign(typ="at+jwt"), now=NOW)


async def test_an_id_token_is_never_an_access_token(make_provider):
    """The ID token's aud is the client id — the default bearer_audiences — and it travels in sign-out URLs
    (id_token_hint), browser history and provider logs. Its nonce gives it away whatever typ it has."""
    id_token = sign(typ="JWT", nonce="n-0S6_WzA2Mj", auth_time=NOW)
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), id_token, now=NOW)
    assert info.value.code == "typ"
    lenient = make_provider(bearer_token_types=["at+jwt", "JWT", ""], bearer_audiences=["cid"])
    for token in (id_token, sign(typ=None, nonce="n"), sign(typ="at+jwt", nonce="n")):
        with pytest.raises(BearerRejected) as info:
            await verify_bearer(lenient, token, now=NOW)
        assert info.value.code in ("typ", "nonce")
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(lenient, sign(typ="JWT", nonce="n"), now=NOW)
    assert info.value.code == "nonce"


async def test_a_logout_token_is_never_an_access_token(make_provider):
    logout = {"events": {BACKCHANNEL_EVENT: {}}, "sid": "s1", "jti": "j1"}
    lenient = make_provider(bearer_token_types=["at+jwt", "JWT", ""], bearer_audiences=["cid"])
    for typ, code in (("logout+jwt", "typ"), ("application/logout+jwt", "typ"), ("JWT", "events"),
                      (None, "events"), ("at+jwt", "events")):
        with pytest.raises(BearerRejected) as info:
            await verify_bearer(lenient, sign(typ=typ, **logout), now=NOW)
        assert info.value.code == code, typ


@pytest.mark.parametrize("types,message", [
    ([], "list at least one"),
    (["logout+jwt"], "never an access token"),
    (["application/secevent+jwt"], "never an access token"),
    (["at jwt"], "not a typ header value"),
    (["at+jwt\r\nX: y"], "not a typ header value"),
])
def test_bearer_token_types_is_validated(types, message):
    with pytest.raises(ConfigError) as info:
        make_config(provider={"issuer": ISS, "client_id": "cid", "client_secret": "c", "bearer_token_types": types})
    assert "provider.bearer_token_types" in str(info.value) and message in str(info.value)


def test_untyped_access_tokens_need_an_explicit_audience():
    """An ID token's aud is the client id, the default bearer_audiences: accepting typ JWT (or none) with that
    default would leave only the nonce to tell an ID token from an access token."""
    settings = {"issuer": ISS, "client_id": "cid", "client_secret": "c", "accept_bearer_tokens": True}
    with pytest.raises(ConfigError) as info:
        make_config(provider={**settings, "bearer_token_types": ["at+jwt", "JWT"]})
    assert "provider.bearer_audiences" in str(info.value) and "API's audience" in str(info.value)
    make_config(provider={**settings, "bearer_token_types": ["application/at+jwt"]})
    make_config(provider={**settings, "bearer_token_types": ["JWT"], "bearer_audiences": ["api://orders"]})


def segment(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def with_header(header, payload=None) -> str:
    """A token with this header, the payload of a valid token and its (now wrong) signature."""
    _, body, signature = sign().split(".")
    return f"{segment(header)}.{segment(payload) if payload is not None else body}.{signature}"


GOOD_HEADER = {"alg": "RS256", "kid": "k1", "typ": "at+jwt"}
MALFORMED = {
    "kid-list": with_header({**GOOD_HEADER, "kid": ["k1"]}),
    "kid-object": with_header({**GOOD_HEADER, "kid": {"k1": 1}}),
    "kid-number": with_header({**GOOD_HEADER, "kid": 1}),
    "kid-null": with_header({**GOOD_HEADER, "kid": None}),
    "alg-list": with_header({**GOOD_HEADER, "alg": ["RS256"]}),
    "alg-missing": with_header({"kid": "k1", "typ": "at+jwt"}),
    "typ-object": with_header({**GOOD_HEADER, "typ": {"a": 1}}),
    "crit": with_header({**GOOD_HEADER, "crit": ["exp"], "exp": 1}),
    "crit-unknown": with_header({**GOOD_HEADER, "crit": ["x-ours"], "x-ours": True}),
    "b64-false": with_header({**GOOD_HEADER, "b64": False, "crit": ["b64"]}),
    "jku": with_header({**GOOD_HEADER, "jku": "https://evil.example/jwks"}),
    "x5u": with_header({**GOOD_HEADER, "x5u": "https://evil.example/cert"}),
    "jwk": with_header({**GOOD_HEADER, "jwk": KEY.as_dict(private=False)}),
    "x5c": with_header({**GOOD_HEADER, "x5c": ["MIIB"]}),
    "header-list": with_header(["alg", "kid"]),
    "header-string": with_header("RS256"),
    "header-nested": segment(b'{"alg":' + b"[" * 300 + b"]" * 300 + b"}") + ".e30.c2ln",
    "header-not-json": segment(b"not json") + ".e30.c2ln",
    "header-not-utf8": segment(bytes([0xFF, 0xFE])) + ".e30.c2ln",
    "payload-list": with_header(GOOD_HEADER, ["sub"]),
    "payload-nested": with_header(GOOD_HEADER, b"[" * 50_000 + b"]" * 50_000),
    "padding": sign() + "==",
    "standard-base64": sign().replace("-", "+").replace("_", "/") + "+/",
    "bad-base64-length": sign().split(".")[0] + "A.e30.c2ln",
    "two-segments": ".".join(sign().split(".")[:2]),
    "four-segments": sign() + ".e30",
    "jwe-five-segments": "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..aXY.Y3Q.dGFn",
    "empty-segments": "..",
    "huge": with_header(GOOD_HEADER, {"sub": "a" * 200_000}),
    "not-ascii": sign()[:-3] + "é",
}


@pytest.mark.parametrize("token", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_every_malformed_token_is_refused_as_invalid_token(make_provider, token):
    """RFC 6750 §3.1 invalid_token, never another exception (a kid list used to be a TypeError: a 500)."""
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), token, now=NOW)
    assert info.value.code in ("malformed", "signature", "alg", "kid"), info.value


async def test_hmac_keyed_with_the_providers_public_key_is_refused(make_provider):
    """alg confusion: HS256 with the RSA public key as the HMAC secret verifies in a library that lets the
    token pick the algorithm. Here HMAC is never allowed, and no symmetric key comes from a JWKS."""
    public_pem = KEY.as_pem(private=False)
    signing_input = f"{segment(GOOD_HEADER | {'alg': 'HS256'})}.{segment(claims(sub='root'))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{segment(mac)}"
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), forged, now=NOW)
    assert info.value.code == "alg"


async def test_es256_header_never_meets_the_rsa_key_of_that_kid(make_provider):
    forged = jwt.encode({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}, claims(sub="root"), EC)
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), forged, now=NOW)
    assert info.value.code == "kid"


async def test_a_token_signed_with_another_algorithm_than_its_header_says_is_refused(make_provider):
    header, payload, _ = sign().split(".")
    ps = jwt.encode({"alg": "PS256", "kid": "k1", "typ": "at+jwt"}, claims(), KEY, algorithms=["PS256"])
    ps_signature = ps.split(".")[2]
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), f"{header}.{payload}.{ps_signature}", now=NOW)
    assert info.value.code == "signature"


@pytest.mark.parametrize("changes,code", [
    ({"exp": str(NOW + 300)}, "exp"),
    ({"exp": 10**400}, "exp"),                       # no float holds it: was an OverflowError (500)
    ({"exp": 1e300}, "exp"),                          # past the year 9999: never expires, so no date
    ({"exp": float("nan")}, "exp"),                   # NaN compares false with everything: never expired
    ({"exp": float("inf")}, "exp"),
    ({"exp": True}, "exp"),
    ({"exp": -1}, "exp"),
    ({"iat": NOW + 3600}, "iat"),                     # issued an hour from now
    ({"iat": "now"}, "iat"),
    ({"nbf": float("nan")}, "nbf"),
    ({"iss": ISS + "/"}, "iss"),                      # a trailing slash is another issuer
    ({"iss": ISS.upper()}, "iss"),
    ({"aud": []}, "aud"),
    ({"aud": ["cid", 7]}, "aud"),
    ({"aud": {"cid": True}}, "aud"),
    ({"sub": ""}, "sub"),
    ({"sub": ["alice"]}, "sub"),
])
async def test_claims_of_the_wrong_type_or_range_are_refused(make_provider, changes, code):
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(make_provider(), sign(**changes), now=NOW)
    assert info.value.code == code


async def test_float_exp_and_extra_audiences_with_azp_are_fine(make_provider):
    session = await verify_bearer(make_provider(), sign(exp=NOW + 299.5, aud=["other", "cid"], azp="other"), now=NOW)
    assert session.expires_at == NOW + 299.5


@pytest.mark.parametrize("overage", [{"_claim_names": {"groups": "src1"},
                                      "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/x"}}},
                                     {"hasgroups": True}])
async def test_an_entra_token_whose_groups_overflowed_is_refused(make_provider, overage):
    """Its groups cannot be read from Graph with a token for our API: judged on no groups, a rule refusing
    a group would let it through."""
    entra = make_provider(type="microsoft", tenant="t-1", claims={"groups": "groups"})
    with pytest.raises(BearerRejected) as info:
        await verify_bearer(entra, sign(**overage), now=NOW)
    assert info.value.code == "groups_overage"
    session = await verify_bearer(entra, sign(groups=["g1"]), now=NOW)
    assert session.identity.groups == ("g1",)
    other = make_provider(claims={"groups": "groups"})              # not Entra: the markers mean nothing
    assert (await verify_bearer(other, sign(**overage), now=NOW)).identity.groups == ()
