"""Properties of the token validator (``proxy.tokens``) and the Bearer header parser (``proxy.bearer``).

Whatever a client sends as ``Authorization: Bearer …``, the only outcomes are "no token", a valid
access token, or a refusal with a short code (``TokenValidationError`` / ``BearerRejected``, a 401
``invalid_token``) — never another exception, which would be a 500 with a traceback. Tokens are built
from headers whose registered members carry JSON values of every type (a ``kid`` list or object, a
``crit``, a ``jwk``…), payloads of every shape, base64 that is padded, standard or truncated, and
segments of the wrong number — each partly well-formed, so the fuzzer gets past the first check.

And what is accepted is an access token: signed by the provider's key, typed ``at+jwt``, without
``nonce`` or ``events``, of our issuer and audience, not expired.

Profiles as in ``test_properties.py`` (``HYPOTHESIS_PROFILE=long`` for a long run).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from proxy.bearer import bearer_token
from proxy.errors import BearerRejected
from proxy.errors import TokenValidationError
from proxy.tokens import Expectations, TokenValidator

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=100_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NOW = 1_700_000_000.0
ISS = "https://idp.example.com"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
EXPECT = Expectations(issuer=ISS, client_id="cid", algorithms=("RS256", "ES256", "PS256"), leeway=60.0,
                      access_audiences=("cid",), access_types=frozenset({"at+jwt"}))


async def keys(kid: str | None, alg: str) -> RSAKey:
    """The provider's key lookup, reduced to one RSA key named k1 (or no kid)."""
    if kid not in (None, "k1") or not alg.startswith(("RS", "PS")):
        raise TokenValidationError("kid", "no signing key fits")
    return KEY


VALIDATOR = TokenValidator(EXPECT, keys, lambda: NOW)
RS256 = JWSRegistry.algorithms["RS256"]        # signs headers joserfc would refuse to produce

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
HEADER_NAMES = ["alg", "kid", "typ", "cty", "crit", "jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "b64", "enc", "zip"]
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), json_values, max_size=5).map(
    lambda h: {"alg": "RS256", "kid": "k1", "typ": "at+jwt", **h})
CLAIM_NAMES = ["iss", "aud", "sub", "exp", "iat", "nbf", "nonce", "events", "azp", "jti"]
good_claims = {"iss": ISS, "aud": "cid", "sub": "alice", "exp": NOW + 300, "iat": NOW}
payloads = st.one_of(
    st.dictionaries(st.sampled_from(CLAIM_NAMES), json_values, max_size=5).map(lambda c: {**good_claims, **c}),
    json_values,
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(value: object) -> str:
    return b64(json.dumps(value).encode())


@st.composite
def forged_tokens(draw) -> str:
    """Header and payload of any shape; the signature valid for them, for another token, or random."""
    header, payload = draw(headers), draw(payloads)
    signing_input = f"{segment(header)}.{segment(payload)}"
    kind = draw(st.sampled_from(["random", "real", "empty"]))
    if kind == "real":
        signature = jwt.encode({"alg": "RS256", "kid": "k1", "typ": "at+jwt"}, good_claims, KEY).split(".")[2]
    elif kind == "random":
        signature = b64(draw(st.binary(max_size=300)))
    else:
        signature = ""
    return f"{signing_input}.{signature}"


@st.composite
def signed_tokens(draw) -> str:
    """Signed by the provider's own key: only the claims and header can be wrong."""
    header = draw(st.dictionaries(st.sampled_from(["typ", "cty", "x5t", "kid"]), json_values, max_size=2))
    payload = draw(st.one_of(st.dictionaries(st.sampled_from(CLAIM_NAMES), json_values, max_size=4)
                             .map(lambda c: {**good_claims, **c}), json_values))
    signing_input = f"{segment({'alg': 'RS256', 'kid': 'k1', 'typ': 'at+jwt', **header})}.{segment(payload)}"
    return f"{signing_input}.{b64(RS256.sign(signing_input.encode(), KEY))}"


def mangle(token: str, draw_edit: tuple[str, int, str]) -> str:
    kind, i, text = draw_edit
    i %= max(len(token), 1)
    return {"insert": token[:i] + text + token[i:], "cut": token[:i], "replace": token[:i] + text + token[i + 1:],
            "pad": token + "=" * (i % 4), "standard": token.replace("-", "+").replace("_", "/")}[kind]


edits = st.tuples(st.sampled_from(["insert", "cut", "replace", "pad", "standard"]), st.integers(0, 2000),
                  st.text(alphabet="._-=+/A\u00e9\x00 ", min_size=1, max_size=3))
any_token = st.one_of(
    forged_tokens(),
    signed_tokens(),
    st.tuples(signed_tokens(), edits).map(lambda t: mangle(*t)),
    st.text(alphabet="abcXYZ019-_.=+/", max_size=200),
    st.text(max_size=100),
    st.lists(st.text(alphabet="eyJ0_-", max_size=30), max_size=7).map(".".join),
)


def accepted_or_refused(token: str) -> dict | None:
    try:
        return asyncio.run(VALIDATOR.access_token(token))
    except TokenValidationError as exc:
        assert exc.code and len(exc.code) < 20
        return None


@settings(PROFILE)
@given(token=any_token)
@example(token=f"{segment({'alg': 'RS256', 'kid': ['k1']})}.{segment(good_claims)}.c2ln")
@example(token=f"{segment({'alg': 'RS256', 'kid': {'k': 1}})}.{segment(good_claims)}.c2ln")
@example(token=f"{segment(['alg'])}.{segment(good_claims)}.c2ln")
@example(token=f"{b64(b'[' * 400)}.{segment(good_claims)}.c2ln")
@example(token=f"{segment({'alg': 'RS256'})}.{b64(b'[' * 60_000)}.c2ln")
def test_any_token_is_accepted_or_refused_with_a_code(token):
    claims = accepted_or_refused(token)
    if claims is not None:                # only an access token of ours gets through
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        assert header["typ"].lower().removeprefix("application/") == "at+jwt"
        assert "nonce" not in claims and "events" not in claims
        assert claims["iss"] == ISS and claims["exp"] + 60 > NOW
        assert claims["aud"] == "cid" or "cid" in claims["aud"]


@settings(PROFILE)
@given(value=st.one_of(
    st.text(max_size=60).map(lambda t: "Bearer " + t),
    st.tuples(st.sampled_from(["Bearer ", "bearer  ", "BEARER ", "Bearer\t", " Bearer "]), any_token).map("".join),
    st.text(max_size=40),
))
def test_any_authorization_header_is_no_token_a_token_or_refused(value):
    try:
        request = make_mocked_request("GET", "/", headers=[("Authorization", value)])
    except ValueError:                    # not a header aiohttp would have parsed from the wire
        return
    try:
        token = bearer_token(request)
    except BearerRejected as exc:
        assert exc.code == "malformed" and exc.status == 401
        return
    if token is not None:
        accepted_or_refused(token)


def test_the_fuzzers_good_token_is_accepted():
    """The property's positive branch is reachable: a well-formed access token passes."""
    token = jwt.encode({"alg": "RS256", "kid": "k1"}, good_claims, KEY, default_type="at+jwt")
    assert accepted_or_refused(token) == good_claims
    with pytest.raises(TokenValidationError):
        asyncio.run(VALIDATOR.access_token(token.replace(".", "..", 1)))
