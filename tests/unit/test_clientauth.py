"""Client authentication at the token endpoint (proxy/provider/clientauth.py): what each method sends, the
claims and header of a client assertion (RFC 7523 §3, OIDC Core §9), and the choice of its algorithm."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from proxy.errors import ProviderError
from proxy.provider import Metadata
from proxy.provider.clientauth import ASSERTION_LIFETIME, JWT_BEARER, ClientAuthentication, check_method
from tests.unit.conftest import make_config

NOW = 1_700_000_000.0
ISS = "https://idp.example.com"
TOKEN = "https://idp.example.com/oauth/token"
META = Metadata(issuer=ISS, authorization_endpoint=ISS + "/auth", token_endpoint=TOKEN)


def auth(provider: dict, meta: Metadata = META) -> ClientAuthentication:
    return ClientAuthentication(make_config(provider=provider).provider, meta, lambda: NOW)


def key_file(tmp_path: Path, key, name: str = "key.pem", **jwk_members) -> str:
    path = tmp_path / name
    if jwk_members or name.endswith(".json"):
        path.write_text(json.dumps({**key.as_dict(private=True), **jwk_members}))
    else:
        path.write_bytes(key.as_pem(private=True))
    return str(path)


def key_auth(path: str, **more) -> dict:
    return {"client_secret": None, "token_endpoint_auth_method": "private_key_jwt", "private_key_file": path, **more}


def decode(assertion: str, key, alg: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.decode(assertion, key, algorithms=[alg])


def test_basic_and_post_send_the_secret():
    form, headers = auth({}).apply({"grant_type": "refresh_token"})
    assert form == {"grant_type": "refresh_token"}
    assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")) == b"cid:csecret"
    form, headers = auth({"token_endpoint_auth_method": "client_secret_post"}).apply({"grant_type": "x"})
    assert form == {"grant_type": "x", "client_id": "cid", "client_secret": "csecret"} and headers == {}


def test_a_public_client_sends_its_id_and_nothing_else():
    form, headers = auth({"client_secret": None, "token_endpoint_auth_method": "none"}).apply({"code": "c"})
    assert form == {"code": "c", "client_id": "cid"} and headers == {}


def test_private_key_jwt_assertion(tmp_path):
    key = RSAKey.generate_key(2048, private=True)
    form, headers = auth(key_auth(key_file(tmp_path, key), private_key_id="k-2026")).apply({"code": "c"})
    assert headers == {} and "client_secret" not in form
    assert form["client_assertion_type"] == JWT_BEARER and form["client_id"] == "cid"
    token = decode(form["client_assertion"], key, "RS256")
    assert token.header == {"alg": "RS256", "typ": "JWT", "kid": "k-2026"}
    c = token.claims
    assert (c["iss"], c["sub"], c["aud"], c["iat"], c["exp"]) == ("cid", "cid", ISS, NOW, NOW + ASSERTION_LIFETIME)
    # A fresh jti each time: providers refuse a replayed assertion.
    again = decode(auth(key_auth(key_file(tmp_path, key))).apply({})[0]["client_assertion"], key, "RS256")
    assert again.claims["jti"] != c["jti"] and len(c["jti"]) >= 20
    assert "kid" not in again.header                      # a PEM key has no kid of its own


def test_the_audience_may_be_the_token_endpoint(tmp_path):
    key = ECKey.generate_key("P-256", private=True)
    a = auth(key_auth(key_file(tmp_path, key), client_assertion_audience="token_endpoint"))
    assert decode(a.assertion(), key, "ES256").claims["aud"] == TOKEN


def test_a_jwk_brings_its_kid_and_alg(tmp_path):
    key = RSAKey.generate_key(2048, private=True)
    path = key_file(tmp_path, key, "key.json", kid="from-jwk", alg="PS256")
    token = decode(auth(key_auth(path)).assertion(), key, "PS256")
    assert token.header["kid"] == "from-jwk" and token.header["alg"] == "PS256"


@pytest.mark.parametrize(("key", "offered", "alg"), [
    (RSAKey.generate_key(2048, private=True), (), "RS256"),
    (RSAKey.generate_key(2048, private=True), ("HS256", "PS256", "ES256"), "PS256"),
    (ECKey.generate_key("P-384", private=True), ("RS256", "ES384"), "ES384"),
    (OKPKey.generate_key("Ed25519", private=True), ("RS256", "EdDSA"), "EdDSA"),
], ids=["rsa-default", "rsa-ps256", "p384", "ed25519"])
def test_the_algorithm_is_the_first_the_key_can_make_that_the_provider_lists(tmp_path, key, offered, alg):
    meta = Metadata(issuer=ISS, authorization_endpoint="a", token_endpoint=TOKEN,
                    token_endpoint_auth_signing_alg_values_supported=offered)
    assert decode(auth(key_auth(key_file(tmp_path, key)), meta).assertion(), key, alg).header["alg"] == alg


def test_a_provider_that_takes_none_of_the_keys_algorithms_is_named(tmp_path):
    meta = Metadata(issuer=ISS, authorization_endpoint="a", token_endpoint=TOKEN,
                    token_endpoint_auth_signing_alg_values_supported=("HS256", "RS256"))
    key = ECKey.generate_key("P-256", private=True)
    with pytest.raises(ProviderError) as caught:
        auth(key_auth(key_file(tmp_path, key)), meta)
    assert "HS256, RS256" in str(caught.value) and "ES256" in str(caught.value)


def test_client_secret_jwt_is_signed_with_the_secret_which_is_never_sent():
    form, headers = auth({"token_endpoint_auth_method": "client_secret_jwt"}).apply({})
    assert "csecret" not in json.dumps(form) and headers == {}
    with warnings.catch_warnings():          # joserfc warns that "csecret" is short
        warnings.simplefilter("ignore")
        secret = OctKey.import_key(b"csecret")
    token = decode(form["client_assertion"], secret, "HS256")
    assert token.claims["iss"] == token.claims["sub"] == "cid" and token.claims["aud"] == ISS


def test_a_method_the_provider_does_not_list_is_named_at_discovery():
    meta = Metadata(issuer=ISS, authorization_endpoint="a", token_endpoint=TOKEN,
                    token_endpoint_auth_methods_supported=("client_secret_basic", "private_key_jwt"))
    check_method(make_config().provider, meta)
    with pytest.raises(ProviderError) as caught:
        check_method(make_config(provider={"client_secret": None, "token_endpoint_auth_method": "none"}).provider,
                     meta)
    assert "does not accept token_endpoint_auth_method none" in str(caught.value)
    assert "client_secret_basic, private_key_jwt" in str(caught.value)


def test_a_certificate_names_the_key_by_its_thumbprints(tmp_path):
    import hashlib
    import ssl

    from tests.support.certs import self_signed_pem

    key = RSAKey.generate_key(2048, private=True)
    pem = self_signed_pem(key)
    (tmp_path / "cert.pem").write_bytes(pem)
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    a = auth(key_auth(key_file(tmp_path, key), private_key_certificate_file=str(tmp_path / "cert.pem")))
    header = decode(a.assertion(), key, "RS256").header

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    assert header["x5t"] == b64(hashlib.sha1(der).digest())
    assert header["x5t#S256"] == b64(hashlib.sha256(der).digest())
