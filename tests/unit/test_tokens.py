"""Tests for proxy.tokens: one validator, three kinds of token, an injected clock.

Tokens are signed here with a local EC key, headers forged byte by byte where joserfc would refuse to
write them; the validator's clock is a variable, so expiry and leeway are tested at the second without
sleeping. tests/unit/test_provider.py checks the same validator through the provider (JWKS, rotation)
against real keys served over HTTP; tests/fuzz/test_token_decoding.py throws malformed input at it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

from proxy.errors import TokenValidationError
from proxy.tokens import (
    BACKCHANNEL_EVENT,
    LOGOUT_TOKEN_MAX_AGE,
    MAX_NUMERIC_DATE,
    MAX_TOKEN_LENGTH,
    Expectations,
    TokenValidator,
    media_type,
)

NOW = 1_700_000_000.0
ISS = "https://idp.example.com"
LEEWAY = 30.0
KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"})
ES256 = JWSRegistry.algorithms["ES256"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(claims: Any, header: dict[str, Any] | None = None) -> str:
    """A compact JWS with exactly this header and payload (joserfc would refuse to write some)."""
    head = {"alg": "ES256", "kid": "k1", **(header or {})}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(ES256.sign(signing_input.encode(), KEY))}"


class Clock:
    now = NOW

    def __call__(self) -> float:
        return self.now


class Keys:
    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str]] = []

    async def __call__(self, kid: str | None, alg: str) -> ECKey:
        self.asked.append((kid, alg))
        if kid not in ("k1", None):
            raise TokenValidationError("kid", "no signing key fits")
        return KEY


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys() -> Keys:
    return Keys()


def validator(clock: Clock, keys: Keys, **changes: Any) -> TokenValidator:
    expect = dict(issuer=ISS, client_id="cid", algorithms=("ES256",), leeway=LEEWAY, access_audiences=("api",),
                  access_types=frozenset({"at+jwt"}))
    expect.update(changes)
    return TokenValidator(Expectations(**expect), keys, clock)


def id_claims(**changes: Any) -> dict[str, Any]:
    claims = {"iss": ISS, "aud": "cid", "sub": "alice", "exp": NOW + 300, "iat": NOW, "nonce": "n-1"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def access_claims(**changes: Any) -> dict[str, Any]:
    claims = {"iss": ISS, "aud": "api", "sub": "alice", "exp": NOW + 300, "iat": NOW, "client_id": "cid"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def logout_claims(**changes: Any) -> dict[str, Any]:
    claims = {"iss": ISS, "aud": "cid", "iat": NOW, "jti": "j-1", "sid": "sid-1",
              "events": {BACKCHANNEL_EVENT: {}}}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def refused(call: Any) -> str:
    with pytest.raises(TokenValidationError) as raised:
        await call
    return raised.value.code


def test_media_type() -> None:
    assert media_type("application/AT+JWT") == "at+jwt"
    assert media_type("at+jwt") == "at+jwt"
    assert media_type("JWT") == "jwt"
    assert media_type("text/at+jwt") == "text/at+jwt"


# -- ID tokens ---------------------------------------------------------------------------------------------


async def test_a_valid_id_token_gives_its_claims_and_asks_for_the_key_by_kid(clock: Clock, keys: Keys) -> None:
    claims = await validator(clock, keys).id_token(sign(id_claims()), nonce="n-1")
    assert claims["sub"] == "alice"
    assert keys.asked == [("k1", "ES256")]


async def test_the_nonce_must_be_the_one_sent(clock: Clock, keys: Keys) -> None:
    v = validator(clock, keys)
    assert await refused(v.id_token(sign(id_claims()), nonce="n-2")) == "nonce"
    assert await refused(v.id_token(sign(id_claims(nonce=None)), nonce="n-1")) == "nonce"
    assert await refused(v.id_token(sign(id_claims(nonce=5)), nonce="5")) == "nonce"


async def test_a_refreshed_id_token_needs_no_nonce_but_the_same_subject(clock: Clock, keys: Keys) -> None:
    """OIDC Core §12.2."""
    v = validator(clock, keys)
    token = sign(id_claims(nonce=None))
    assert (await v.id_token(token, nonce=None, expected_sub="alice"))["sub"] == "alice"
    assert await refused(v.id_token(token, nonce=None, expected_sub="bob")) == "sub"


async def test_expiry_is_checked_with_the_clock_and_leeway(clock: Clock, keys: Keys) -> None:
    v = validator(clock, keys)
    token = sign(id_claims(exp=NOW + 100))
    clock.now = NOW + 100 + LEEWAY - 0.5
    await v.id_token(token, nonce="n-1")
    clock.now = NOW + 100 + LEEWAY
    assert await refused(v.id_token(token, nonce="n-1")) == "exp"


async def test_not_before_and_issued_at_in_the_future_beyond_the_leeway(clock: Clock, keys: Keys) -> None:
    v = validator(clock, keys)
    await v.id_token(sign(id_claims(nbf=NOW + LEEWAY, iat=NOW + LEEWAY)), nonce="n-1")   # within the leeway
    assert await refused(v.id_token(sign(id_claims(nbf=NOW + LEEWAY + 1)), nonce="n-1")) == "nbf"
    assert await refused(v.id_token(sign(id_claims(iat=NOW + LEEWAY + 1)), nonce="n-1")) == "iat"


@pytest.mark.parametrize(("changes", "code"), [
    ({"iss": ISS + "/"}, "iss"), ({"iss": None}, "iss"), ({"aud": "other"}, "aud"), ({"aud": ["other"]}, "aud"),
    ({"aud": None}, "aud"), ({"aud": []}, "aud"), ({"aud": 5}, "aud"), ({"aud": ["cid", 5]}, "aud"),
    ({"aud": ["cid", "other"]}, "azp"), ({"aud": ["cid", "other"], "azp": "other"}, "azp"),
    ({"azp": "other"}, "azp"), ({"sub": None}, "sub"), ({"sub": ""}, "sub"), ({"sub": 5}, "sub"),
    ({"iat": None}, "iat"), ({"exp": None}, "exp"), ({"exp": "2099"}, "exp"), ({"exp": True}, "exp"),
    ({"exp": MAX_NUMERIC_DATE + 1}, "exp"), ({"iat": -1}, "iat"), ({"nbf": [1]}, "nbf"),
    ({"events": {BACKCHANNEL_EVENT: {}}}, "events"),
])
async def test_id_token_claim_checks(clock: Clock, keys: Keys, changes: dict[str, Any], code: str) -> None:
    assert await refused(validator(clock, keys).id_token(sign(id_claims(**changes)), nonce="n-1")) == code


async def test_several_audiences_with_azp_of_this_client_pass(clock: Clock, keys: Keys) -> None:
    claims = await validator(clock, keys).id_token(sign(id_claims(aud=["other", "cid"], azp="cid")), nonce="n-1")
    assert claims["azp"] == "cid"


async def test_the_issuer_must_be_known(clock: Clock, keys: Keys) -> None:
    assert await refused(validator(clock, keys, issuer=None).id_token(sign(id_claims()), nonce="n-1")) == "iss"


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "logout+jwt", "Application/Logout+JWT"])
async def test_an_id_token_typed_as_another_kind_is_refused(clock: Clock, keys: Keys, typ: str) -> None:
    assert await refused(validator(clock, keys).id_token(sign(id_claims(), {"typ": typ}), nonce="n-1")) == "typ"


# -- decoding and the signature ---------------------------------------------------------------------------


async def test_an_algorithm_outside_the_allow_list_is_refused_before_any_key_lookup(clock: Clock,
                                                                                    keys: Keys) -> None:
    v = validator(clock, keys)
    assert await refused(v.id_token(sign(id_claims(), {"alg": "HS256"}), nonce="n-1")) == "alg"
    none_header = b64(json.dumps({"alg": "none"}).encode())
    unsigned = f"{none_header}.{b64(json.dumps(id_claims()).encode())}."
    assert await refused(v.id_token(unsigned, nonce="n-1")) == "alg"
    assert keys.asked == []


@pytest.mark.parametrize("member", [{"jku": "https://evil/jwks"}, {"x5u": "https://evil/c"}, {"jwk": {"kty": "EC"}},
                                    {"x5c": ["MII"]}, {"crit": ["exp"]}, {"b64": False}, {"kid": ["k1"]},
                                    {"typ": 5}])
async def test_header_members_that_bring_a_key_or_an_extension_are_refused(clock: Clock, keys: Keys,
                                                                          member: dict[str, Any]) -> None:
    assert await refused(validator(clock, keys).id_token(sign(id_claims(), member), nonce="n-1")) == "malformed"
    assert keys.asked == []


async def test_a_wrong_signature_is_refused(clock: Clock, keys: Keys) -> None:
    head, body, signature = sign(id_claims()).split(".")
    other = sign(id_claims(sub="mallory")).split(".")[1]
    assert await refused(validator(clock, keys).id_token(f"{head}.{other}.{signature}", nonce="n-1")) == "signature"
    forged = f"{head}.{body}.{'A' * len(signature)}"
    assert await refused(validator(clock, keys).id_token(forged, nonce="n-1")) == "signature"


async def test_an_unknown_key_id_is_the_lookups_refusal(clock: Clock, keys: Keys) -> None:
    assert await refused(validator(clock, keys).id_token(sign(id_claims(), {"kid": "k9"}), nonce="n-1")) == "kid"


@pytest.mark.parametrize("token", [
    "", "a.b", "a.b.c.d", "a b.c.d", "a.b.c=", 5, None,
    "x" * (MAX_TOKEN_LENGTH + 1),
])
async def test_what_is_not_a_compact_jws_is_malformed(clock: Clock, keys: Keys, token: Any) -> None:
    assert await refused(validator(clock, keys).id_token(token, nonce="n-1")) == "malformed"


@pytest.mark.parametrize("payload", [[1, 2], "text", 5, None])
async def test_a_payload_that_is_not_an_object_is_malformed(clock: Clock, keys: Keys, payload: Any) -> None:
    assert await refused(validator(clock, keys).id_token(sign(payload), nonce="n-1")) == "malformed"


# -- access tokens (RFC 9068) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
async def test_a_jwt_access_token(clock: Clock, keys: Keys, typ: str) -> None:
    claims = await validator(clock, keys).access_token(sign(access_claims(), {"typ": typ}))
    assert claims["sub"] == "alice"


@pytest.mark.parametrize(("header", "changes", "code"), [
    ({"typ": "JWT"}, {}, "typ"), ({}, {}, "typ"), ({"typ": "logout+jwt"}, {}, "typ"),
    ({"typ": "at+jwt"}, {"nonce": "n"}, "nonce"), ({"typ": "at+jwt"}, {"events": {}}, "events"),
    ({"typ": "at+jwt"}, {"aud": "cid"}, "aud"), ({"typ": "at+jwt"}, {"sub": None}, "sub"),
    ({"typ": "at+jwt"}, {"exp": None}, "exp"), ({"typ": "at+jwt"}, {"exp": NOW - LEEWAY}, "exp"),
])
async def test_access_token_checks(clock: Clock, keys: Keys, header: dict[str, Any], changes: dict[str, Any],
                                   code: str) -> None:
    assert await refused(validator(clock, keys).access_token(sign(access_claims(**changes), header))) == code


async def test_configured_access_types_widen_but_never_admit_other_kinds(clock: Clock, keys: Keys) -> None:
    """provider.bearer_token_types may admit "jwt" or no typ (Keycloak, Entra), never a logout token,
    and an ID token (it has a nonce) stays refused however it is typed."""
    v = validator(clock, keys, access_types=frozenset({"at+jwt", "jwt", "", "logout+jwt"}))
    assert (await v.access_token(sign(access_claims(), {"typ": "JWT"})))["sub"] == "alice"
    assert (await v.access_token(sign(access_claims())))["sub"] == "alice"
    assert await refused(v.access_token(sign(access_claims(), {"typ": "logout+jwt"}))) == "typ"
    id_token = sign(id_claims(aud="api"), {"typ": "JWT"})
    assert await refused(v.access_token(id_token)) == "nonce"


async def test_an_access_token_needs_no_iat(clock: Clock, keys: Keys) -> None:
    assert "iat" not in await validator(clock, keys).access_token(sign(access_claims(iat=None), {"typ": "at+jwt"}))


# -- logout tokens (Back-Channel Logout 1.0 §2.6) --------------------------------------------------------------


async def test_a_valid_logout_token_without_exp(clock: Clock, keys: Keys) -> None:
    claims = await validator(clock, keys).logout_token(sign(logout_claims(), {"typ": "logout+jwt"}))
    assert claims["sid"] == "sid-1" and "exp" not in claims


async def test_a_logout_token_by_sub_alone(clock: Clock, keys: Keys) -> None:
    claims = await validator(clock, keys).logout_token(sign(logout_claims(sid=None, sub="alice")))
    assert claims["sub"] == "alice"


async def test_a_logout_token_is_refused_when_too_old_or_from_the_future(clock: Clock, keys: Keys) -> None:
    v = validator(clock, keys)
    token = sign(logout_claims())
    clock.now = NOW + LOGOUT_TOKEN_MAX_AGE + LEEWAY
    await v.logout_token(token)
    clock.now = NOW + LOGOUT_TOKEN_MAX_AGE + LEEWAY + 1
    assert await refused(v.logout_token(token)) == "iat"
    clock.now = NOW
    assert await refused(v.logout_token(sign(logout_claims(iat=NOW + LEEWAY + 1)))) == "iat"


@pytest.mark.parametrize(("changes", "code"), [
    ({"events": None}, "events"), ({"events": {"other": {}}}, "events"), ({"events": {BACKCHANNEL_EVENT: 1}}, "events"),
    ({"events": [BACKCHANNEL_EVENT]}, "events"), ({"nonce": "n"}, "nonce"), ({"sid": None}, "sid"),
    ({"sid": ""}, "sid"), ({"jti": None}, "jti"), ({"jti": 5}, "jti"), ({"aud": "api"}, "aud"),
    ({"iat": None}, "iat"), ({"exp": NOW - LEEWAY}, "exp"),
])
async def test_logout_token_checks(clock: Clock, keys: Keys, changes: dict[str, Any], code: str) -> None:
    assert await refused(validator(clock, keys).logout_token(sign(logout_claims(**changes)))) == code


async def test_a_logout_token_typed_as_an_access_token_is_refused(clock: Clock, keys: Keys) -> None:
    assert await refused(validator(clock, keys).logout_token(sign(logout_claims(), {"typ": "at+jwt"}))) == "typ"
