"""ID-token verification (OIDC Core §3.1.3.7), key choice and JWKS refetch limits, token-response parsing.

A small in-process aiohttp server plays the provider's JWKS and token endpoints; the clock is injected.
"""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from proxy.errors import ProviderError, TokenRejected, TokenValidationError
from proxy.provider import JWKS_REFETCH_BURST, Metadata, Provider
from tests.unit.conftest import make_config

NOW = 1_700_000_000.0
ISS = "https://idp.example.com"
RSA1 = RSAKey.generate_key(2048, parameters={"kid": "r1"})
RSA2 = RSAKey.generate_key(2048, parameters={"kid": "r2"})
EC1 = ECKey.generate_key("P-256", parameters={"kid": "e1"})


def claims(**changes):
    base = {"iss": ISS, "aud": "cid", "sub": "alice", "exp": NOW + 300, "iat": NOW, "nonce": "n1"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(key, alg="RS256", kid=True, **changes):
    header = {"alg": alg}
    if kid and key.kid:
        header["kid"] = key.kid
    return jwt.encode(header, claims(**changes), key, algorithms=[alg])


class FakeIdP:
    def __init__(self) -> None:
        self.keys = [RSA1]
        self.jwks_hits = 0
        self.token_answer: tuple[int, str, str] = (200, "application/json", "{}")
        self.jwks_answer: tuple[int, str, str] | None = None      # None: the keys

    def app(self) -> web.Application:
        async def jwks(request):
            self.jwks_hits += 1
            if self.jwks_answer is not None:
                status, ctype, body = self.jwks_answer
                return web.Response(status=status, text=body, content_type=ctype)
            return web.json_response({"keys": [k.as_dict(private=False) for k in self.keys]})

        async def token(request):
            status, ctype, body = self.token_answer
            return web.Response(status=status, text=body, content_type=ctype)

        app = web.Application()
        app.router.add_get("/jwks", jwks)
        app.router.add_post("/token", token)
        return app


@pytest.fixture
async def idp_and_provider(aiohttp_server):
    idp = FakeIdP()
    server = await aiohttp_server(idp.app())
    base = str(server.make_url("")).rstrip("/")
    config = make_config(provider={"issuer": ISS, "client_id": "cid", "client_secret": "csecret"}).provider
    clock = {"now": NOW}
    async with aiohttp.ClientSession() as http:
        provider = Provider(config, "https://app.example.com/oauth2/callback", http, lambda: clock["now"])
        provider._metadata = Metadata(issuer=ISS, authorization_endpoint=base + "/auth", token_endpoint=base + "/token",
                                      jwks_uri=base + "/jwks")
        yield idp, provider, clock


async def test_valid_token(idp_and_provider):
    _, provider, _ = idp_and_provider
    assert (await provider.verify_id_token(sign(RSA1), nonce="n1"))["sub"] == "alice"


async def id_token_refused(idp_and_provider, changes, code):
    """An ID token signed with ``changes`` to its claims is refused, naming ``code``."""
    _, provider, _ = idp_and_provider
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(sign(RSA1, **changes), nonce="n1")
    assert info.value.code == code


@pytest.mark.parametrize("changes,code", [
    ({"iss": "https://evil.example"}, "iss"),
    ({"aud": "other"}, "aud"),
    ({"aud": ["cid", "other"]}, "azp"),                 # several audiences without azp
    ({"aud": ["cid", "other"], "azp": "other"}, "azp"),
    ({"exp": NOW - 120}, "exp"),
    ({"exp": None}, "exp"),
    ({"iat": None}, "iat"),
    ({"iat": NOW + 3600}, "iat"),
    ({"sub": None}, "sub"),
    ({"nonce": None}, "nonce"),
    ({"nonce": "other"}, "nonce"),
])
async def test_claim_checks(idp_and_provider, changes, code):
    await id_token_refused(idp_and_provider, changes, code)


async def test_azp_matching_client_with_several_audiences_passes(idp_and_provider):
    _, provider, _ = idp_and_provider
    token = sign(RSA1, aud=["cid", "other"], azp="cid")
    assert (await provider.verify_id_token(token, nonce="n1"))["azp"] == "cid"


async def test_small_clock_skew_tolerated(idp_and_provider):
    _, provider, _ = idp_and_provider
    await provider.verify_id_token(sign(RSA1, exp=NOW - 30, iat=NOW + 30), nonce="n1")


async def test_alg_none_and_hmac_with_client_secret_are_refused(idp_and_provider):
    _, provider, _ = idp_and_provider
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(f"{header}.{payload}.", nonce="n1")
    assert info.value.code == "alg"
    hs = jwt.encode({"alg": "HS256"}, claims(), OctKey.import_key(b"csecret" * 5))
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(hs, nonce="n1")
    assert info.value.code == "alg"


async def test_unknown_key_is_rejected_after_one_refetch(idp_and_provider):
    idp, provider, _ = idp_and_provider
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(sign(RSA2), nonce="n1")
    assert info.value.code == "kid" and idp.jwks_hits == 2        # initial fetch + one refetch
    with pytest.raises(TokenValidationError):
        await provider.verify_id_token(sign(RSA2), nonce="n1")
    assert idp.jwks_hits == 2                                       # the same unknown kid: no refetch


async def test_rotation_picked_up_by_refetch(idp_and_provider):
    idp, provider, _ = idp_and_provider
    await provider.verify_id_token(sign(RSA1), nonce="n1")
    idp.keys = [EC1]
    assert (await provider.verify_id_token(sign(EC1, alg="ES256"), nonce="n1"))["sub"] == "alice"
    assert idp.jwks_hits == 2


async def test_forged_kids_cannot_cause_a_refetch_storm(idp_and_provider):
    idp, provider, _ = idp_and_provider
    await provider.verify_id_token(sign(RSA1), nonce="n1")
    for i in range(30):
        forged = RSAKey.generate_key(2048, parameters={"kid": f"forged-{i}"}) if i < 3 else RSA2
        token = jwt.encode({"alg": "RS256", "kid": f"forged-{i}"}, claims(), forged)
        with pytest.raises(TokenValidationError):
            await provider.verify_id_token(token, nonce="n1")
    assert idp.jwks_hits <= 1 + JWKS_REFETCH_BURST


async def test_kid_absent_one_key_accepted_two_keys_rejected(idp_and_provider):
    idp, provider, clock = idp_and_provider
    assert (await provider.verify_id_token(sign(RSA1, kid=False), nonce="n1"))["sub"] == "alice"
    idp.keys = [RSA1, RSA2]
    clock["now"] += 4000                                            # past the JWKS TTL
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(sign(RSA1, kid=False, exp=clock["now"] + 60, iat=clock["now"]), nonce="n1")
    assert info.value.code == "kid"


async def test_refreshed_token_must_keep_subject(idp_and_provider):
    _, provider, _ = idp_and_provider
    await provider.verify_id_token(sign(RSA1, nonce=None), nonce=None, expected_sub="alice")
    with pytest.raises(TokenValidationError):
        await provider.verify_id_token(sign(RSA1, sub="mallory", nonce=None), nonce=None, expected_sub="alice")


@pytest.mark.parametrize("answer,error,transient", [
    ((500, "text/html", "<h1>oops</h1>"), ProviderError, True),
    ((200, "text/html", "<html>login</html>"), ProviderError, False),
    ((200, "application/json", "{not json"), ProviderError, False),
    ((400, "application/json", '{"error":"invalid_grant"}'), TokenRejected, False),
    ((200, "application/json", '{"error":"bad_verification_code"}'), TokenRejected, False),
    ((200, "application/json", '{"access_token":"a","token_type":"mac"}'), ProviderError, False),
    ((200, "application/json", '{"token_type":"Bearer"}'), ProviderError, False),
])
async def test_bad_token_responses(idp_and_provider, answer, error, transient):
    idp, provider, _ = idp_and_provider
    idp.token_answer = answer
    with pytest.raises(error) as info:
        await provider.exchange_code("code", "verifier")
    assert info.value.transient is transient


async def test_form_encoded_token_response(idp_and_provider):
    idp, provider, _ = idp_and_provider
    idp.token_answer = (200, "application/x-www-form-urlencoded", "access_token=gho_x&token_type=bearer&scope=a")
    tokens = await provider.exchange_code("code", "verifier")
    assert tokens.access_token == "gho_x" and tokens.expires_at is None and tokens.refresh_token is None


async def test_expires_in_becomes_a_time(idp_and_provider):
    idp, provider, _ = idp_and_provider
    idp.token_answer = (200, "application/json", '{"access_token":"a","token_type":"Bearer","expires_in":300}')
    assert (await provider.refresh("rt")).expires_at == NOW + 300


# -- back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0 §2.6) ------------------------

from proxy.provider import BACKCHANNEL_EVENT  # noqa: E402


def logout_token(key=RSA1, **changes):
    base = {"iss": ISS, "aud": "cid", "iat": NOW, "exp": NOW + 120, "jti": "j1", "sid": "s1", "sub": "alice",
            "events": {BACKCHANNEL_EVENT: {}}}
    base.update(changes)
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {k: v for k, v in base.items() if v is not None}, key)


async def test_logout_token_valid(idp_and_provider):
    _, provider, _ = idp_and_provider
    assert (await provider.verify_logout_token(logout_token()))["sid"] == "s1"
    assert (await provider.verify_logout_token(logout_token(sid=None)))["sub"] == "alice"


@pytest.mark.parametrize("changes,code", [
    ({"iss": "https://evil.example"}, "iss"), ({"aud": "other"}, "aud"), ({"iat": None}, "iat"),
    ({"iat": NOW - 3600}, "iat"), ({"exp": NOW - 600}, "exp"), ({"events": None}, "events"),
    ({"events": {"other": {}}}, "events"), ({"nonce": "n"}, "nonce"), ({"sid": None, "sub": None}, "sid"),
    ({"jti": None}, "jti"),
])
async def test_logout_token_checks(idp_and_provider, changes, code):
    _, provider, _ = idp_and_provider
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_logout_token(logout_token(**changes))
    assert info.value.code == code


async def test_logout_token_signed_by_unknown_key_is_refused(idp_and_provider):
    _, provider, _ = idp_and_provider
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_logout_token(logout_token(key=RSA2))
    assert info.value.code == "kid"


# -- one validator for every kind, and the JWKS under attack (issue 13) --------------------------------

import asyncio  # noqa: E402

import proxy.tokens  # noqa: E402
from proxy.provider import JWKS_RETRY_AFTER, MAX_EXPIRES_IN  # noqa: E402


async def test_a_logout_token_is_not_a_refreshed_id_token(idp_and_provider):
    """A refreshed ID token is checked without a nonce (OIDC Core §12.2): a logout token for the same user
    (aud = client, sub, iat, exp, no nonce) passed every check an ID token had. Its events claim (and its
    typ, when set) tell them apart."""
    _, provider, _ = idp_and_provider
    for typ in (None, "logout+jwt"):
        header = {"alg": "RS256", "kid": "r1", **({"typ": typ} if typ else {})}
        token = jwt.encode(header, {"iss": ISS, "aud": "cid", "sub": "alice", "iat": NOW, "exp": NOW + 120,
                                    "jti": "j1", "sid": "s1", "events": {BACKCHANNEL_EVENT: {}}}, RSA1,
                           default_type=None)
        with pytest.raises(TokenValidationError) as info:
            await provider.verify_id_token(token, nonce=None, expected_sub="alice")
        assert info.value.code in ("typ", "events")


async def test_an_access_token_is_not_an_id_token_nor_a_logout_token(idp_and_provider):
    _, provider, _ = idp_and_provider
    header = {"alg": "RS256", "kid": "r1", "typ": "at+jwt"}
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(jwt.encode(header, claims(), RSA1), nonce="n1")
    assert info.value.code == "typ"
    logout = {"iss": ISS, "aud": "cid", "iat": NOW, "jti": "j", "sid": "s", "events": {BACKCHANNEL_EVENT: {}}}
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_logout_token(jwt.encode(header, logout, RSA1))
    assert info.value.code == "typ"


async def test_the_nonce_is_compared_in_constant_time(idp_and_provider, monkeypatch):
    _, provider, _ = idp_and_provider
    compared = []

    def spy(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(proxy.tokens.hmac, "compare_digest", spy)
    await provider.verify_id_token(sign(RSA1), nonce="n1")
    assert (b"n1", b"n1") in compared
    for nonce in (["n1"], {"n": 1}, 1):                      # never a TypeError from a nonce of another type
        with pytest.raises(TokenValidationError) as info:
            await provider.verify_id_token(sign(RSA1, nonce=nonce), nonce="n1")
        assert info.value.code == "nonce"


@pytest.mark.parametrize("changes,code", [
    ({"iss": ISS + "/"}, "iss"),
    ({"exp": 10**400}, "exp"),
    ({"exp": float("nan")}, "exp"),
    ({"exp": str(NOW + 300)}, "exp"),
    ({"iat": float("nan")}, "iat"),
    ({"iat": NOW + 10**9}, "iat"),
    ({"aud": ["cid", None]}, "aud"),
    ({"aud": ["cid", "other"], "azp": ["cid"]}, "azp"),
])
async def test_id_token_claims_of_the_wrong_type_or_range(idp_and_provider, changes, code):
    await id_token_refused(idp_and_provider, changes, code)


async def test_a_float_exp_and_iat_are_numeric_dates(idp_and_provider):
    _, provider, _ = idp_and_provider
    await provider.verify_id_token(sign(RSA1, exp=NOW + 0.5, iat=NOW - 0.25), nonce="n1")


async def test_two_keys_with_one_kid_verify_nothing(idp_and_provider):
    """A JWKS with a duplicate kid: no guess which key is meant, and no trying both."""
    idp, provider, _ = idp_and_provider
    twin = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    idp.keys = [RSA1, twin]
    for key in (RSA1, twin):
        with pytest.raises(TokenValidationError) as info:
            await provider.verify_id_token(sign(key), nonce="n1")
        assert info.value.code == "kid"


async def test_a_key_that_names_its_algorithm_verifies_only_that_one(idp_and_provider):
    """RFC 7517 §4.4: a JWK's alg is the algorithm it is meant for."""
    idp, provider, _ = idp_and_provider
    idp.keys = [RSAKey.import_key(RSA1.as_dict(private=True) | {"alg": "RS512"})]
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(sign(RSA1, alg="RS256"), nonce="n1")
    assert info.value.code == "kid"
    assert (await provider.verify_id_token(sign(RSA1, alg="RS512"), nonce="n1"))["sub"] == "alice"


async def test_an_es256_header_never_uses_an_rsa_key_of_that_kid(idp_and_provider):
    _, provider, _ = idp_and_provider
    ec_named_r1 = ECKey.generate_key("P-256", parameters={"kid": "r1"})
    with pytest.raises(TokenValidationError) as info:
        await provider.verify_id_token(sign(ec_named_r1, alg="ES256"), nonce="n1")
    assert info.value.code == "kid"


async def test_a_key_rotation_seen_by_many_requests_at_once_rereads_the_jwks_once(idp_and_provider):
    """Twenty logins with the new kid arrive together: one JWKS read serves them all, and the rate limit
    is left for the next rotation."""
    idp, provider, _ = idp_and_provider
    await provider.verify_id_token(sign(RSA1), nonce="n1")
    idp.keys = [RSA1, RSA2]
    results = await asyncio.gather(*(provider.verify_id_token(sign(RSA2), nonce="n1") for _ in range(20)))
    assert {r["sub"] for r in results} == {"alice"}
    assert idp.jwks_hits == 2


async def test_a_jwks_that_cannot_be_read_is_not_read_again_per_request(idp_and_provider):
    """With no keys yet and the JWKS failing, every login (or forged bearer token) used to read it again."""
    idp, provider, clock = idp_and_provider
    idp.jwks_answer = (200, "application/json", "[" * 100_000 + "]" * 100_000)
    for _ in range(10):
        with pytest.raises(ProviderError) as info:
            await provider.verify_id_token(sign(RSA1), nonce="n1")
        assert info.value.step == "jwks"
    assert idp.jwks_hits == 1
    idp.jwks_answer = None
    clock["now"] += JWKS_RETRY_AFTER
    assert (await provider.verify_id_token(sign(RSA1, exp=clock["now"] + 60, iat=clock["now"]), nonce="n1"))
    assert idp.jwks_hits == 2


@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,
    '{"access_token": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"a": ' * 100_000 + "1" + "}" * 100_000,
], ids=["arrays", "arrays-in-a-member", "objects"])
async def test_deeply_nested_json_is_a_provider_error(idp_and_provider, body):
    idp, provider, _ = idp_and_provider
    idp.token_answer = (200, "application/json", body)
    with pytest.raises(ProviderError) as info:
        await provider.exchange_code("code", "verifier")
    assert "not a JSON object" in info.value.detail


@pytest.mark.parametrize("expires_in", ["NaN", "Infinity", "-Infinity", "-1", "true", '"soon"', "1e999"])
async def test_expires_in_must_be_a_finite_number_of_seconds(idp_and_provider, expires_in):
    """NaN or Infinity as a time compares false with every clock: the token would never be due for refresh."""
    idp, provider, _ = idp_and_provider
    idp.token_answer = (200, "application/json",
                        f'{{"access_token":"a","token_type":"Bearer","expires_in":{expires_in}}}')
    with pytest.raises(ProviderError) as info:
        await provider.refresh("rt")
    assert "expires_in" in info.value.detail


async def test_a_huge_expires_in_is_cut_to_the_longest_lifetime_believed(idp_and_provider):
    idp, provider, _ = idp_and_provider
    for value in ('"3600"', "1e300"):
        answer = f'{{"access_token":"a","token_type":"Bearer","expires_in":{value}}}'
        idp.token_answer = (200, "application/json", answer)
        expected = NOW + (3600 if value == '"3600"' else MAX_EXPIRES_IN)
        assert (await provider.refresh("rt")).expires_at == expected


async def test_the_metadata_loader_survives_any_error(caplog):
    """The background discovery loop (resources.load_metadata) used to catch ProviderError only: anything else —
    a RecursionError then, a bug tomorrow — ended it silently and /ready stayed 503 until a restart."""
    from proxy.resources import load_metadata

    class Flaky:
        config = make_config().provider
        metadata = None                 # no JWKS to read after it (test_the_loader_reads_the_jwks_after_the_metadata)
        calls = 0

        async def load_metadata(self):
            self.calls += 1
            if self.calls == 1:
                raise RecursionError("maximum recursion depth exceeded")
            if self.calls == 2:
                raise ProviderError("discovery", "it answered HTTP 503", transient=True)

    flaky = Flaky()
    caplog.set_level("INFO", logger="authproxy")
    await asyncio.wait_for(load_metadata(flaky), timeout=30)
    assert flaky.calls == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("not loaded (attempt 1): unexpected error" in m for m in messages)
    assert any("not loaded (attempt 2)" in m and "HTTP 503" in m for m in messages)
    assert any("metadata loaded" in m for m in messages)


async def test_the_loader_reads_the_jwks_after_the_metadata_until_it_can(caplog, monkeypatch):
    """/ready names the JWKS: the loader reads it after the metadata, and tries again until it is read."""
    from types import SimpleNamespace

    from proxy import resources

    monkeypatch.setattr(resources, "DISCOVERY_RETRY", (0.01,))
    monkeypatch.setattr(resources, "JWKS_RETRY_AFTER", 0.01)
    steps: list[str] = []

    class Keys:
        async def warm(self):
            steps.append("jwks")
            if steps.count("jwks") == 1:
                raise ProviderError("jwks", "it answered HTTP 503", transient=True)

    class Loaded:
        config = make_config().provider
        metadata = SimpleNamespace(jwks_uri="https://idp.example.com/jwks")
        jwks = Keys()

        async def load_metadata(self):
            steps.append("metadata")

    caplog.set_level("INFO", logger="authproxy")
    await asyncio.wait_for(resources.load_metadata(Loaded()), timeout=10)
    assert steps == ["metadata", "jwks", "jwks"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("JWKS not loaded (attempt 1)" in m and "HTTP 503" in m for m in messages)
    assert any("JWKS loaded" in m for m in messages)


async def test_eddsa_tokens_verify_without_a_warning(idp_and_provider):
    """joserfc warns on "EdDSA" (RFC 9864 deprecates the name); under ``-W error`` that warning was an
    exception out of the verifier. It is an algorithm we allow by default, so it verifies quietly."""
    from joserfc.errors import SecurityWarning
    from joserfc.jwk import OKPKey

    idp, provider, _ = idp_and_provider
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": "o1"})
    idp.keys = [ed]
    with pytest.warns(SecurityWarning):                 # signing (the provider's side) still warns
        token = jwt.encode({"alg": "EdDSA", "kid": "o1"}, claims(), ed, algorithms=["EdDSA"])
    assert (await provider.verify_id_token(token, nonce="n1"))["sub"] == "alice"


# -- pushed authorization requests (RFC 9126) -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "fragment"), [
    (200, {"request_uri": "urn:x", "expires_in": 60}, "not 201 Created"),
    (201, {"expires_in": 60}, "no usable request_uri"),
    (201, {"request_uri": "u" * 3000}, "no usable request_uri"),
    (400, {"error": "invalid_request"}, "invalid_request"),
])
async def test_a_bad_par_answer_is_an_error_not_a_redirect(aiohttp_server, status, body, fragment):
    seen = []

    async def par(request):
        seen.append(dict(await request.post()))
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/par", par)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    config = make_config(provider={"issuer": ISS, "client_id": "cid", "client_secret": "csecret",
                                   "pushed_authorization_requests": True}).provider
    async with aiohttp.ClientSession() as http:
        provider = Provider(config, "https://app.example.com/oauth2/callback", http, lambda: NOW)
        provider._metadata = Metadata(issuer=ISS, authorization_endpoint=base + "/auth", token_endpoint=base + "/t",
                                      pushed_authorization_request_endpoint=base + "/par")
        with pytest.raises((ProviderError, TokenRejected)) as caught:
            await provider.authorization_url(state="s", code_challenge="c", nonce="n")
    assert fragment in str(caught.value)
    assert seen[0]["state"] == "s" and seen[0]["redirect_uri"] == "https://app.example.com/oauth2/callback"


# -- discovery errors that say what to set ------------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "served", "status", "fragments"), [
    ("{base}/", "{base}", 200, ["differ only in the trailing '/'", "set provider.issuer: '{base}'",
                                "{base}/.well-known/openid-configuration"]),
    ("{base}", "{base}/", 200, ["differ only in the trailing '/'", "set provider.issuer: '{base}/'"]),
    ("{base}", "https://other.example", 200, ["names issuer 'https://other.example'", "Discovery §4.3"]),
    ("{base}/tenant", None, 404, ["answered HTTP 404 for {base}/tenant/.well-known/openid-configuration",
                                  "the document's \"issuer\" value"]),
])
async def test_discovery_failures_name_the_url_fetched_and_what_to_set(aiohttp_server, configured, served, status,
                                                                       fragments):
    async def document(request):
        if status != 200:
            return web.json_response({}, status=status)
        return web.json_response({"issuer": served.format(base=base), "authorization_endpoint": "https://a/",
                                  "token_endpoint": "https://t/", "jwks_uri": "https://j/"})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", document)
    app.router.add_get("/tenant/.well-known/openid-configuration", document)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    config = make_config(provider={"issuer": configured.format(base=base)}).provider
    async with aiohttp.ClientSession() as http:
        provider = Provider(config, "https://app.example.com/oauth2/callback", http, lambda: NOW)
        with pytest.raises(ProviderError) as caught:
            await provider.load_metadata()
    for fragment in fragments:
        assert fragment.format(base=base) in str(caught.value)
