"""Credentials read from files (proxy/config/keyfiles.py): a bad file stops start-up naming the key and the fix."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from joserfc.jwk import ECKey, RSAKey

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError
from tests.unit.conftest import make_config

with warnings.catch_warnings():            # joserfc warns of the small key made on purpose
    warnings.simplefilter("ignore")
    SMALL_RSA = RSAKey.generate_key(1024, private=True).as_pem(private=True)

BASE = {"public_url": "https://app.example.com",
        "provider": {"issuer": "https://idp.example.com", "client_id": "cid"},
        "cookie": {"secret": "q" * 43},
        "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}]}


def problems(provider: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "provider": {**BASE["provider"], **provider}}, source="t.yaml", environ={})
    return {p.path: p.message for p in caught.value.problems}


def key_problem(tmp_path: Path, content: bytes | str) -> str:
    path = tmp_path / "key"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    found = problems({"token_endpoint_auth_method": "private_key_jwt", "private_key_file": str(path)})
    return found["provider.private_key_file"]


def test_the_secret_file_is_read_without_its_line_break_and_again_on_each_load(tmp_path):
    path = tmp_path / "secret"
    path.write_text("first-secret\n")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({**BASE, "provider": {**BASE["provider"], "client_secret_file": str(path)}}))
    assert load_config(config, environ={}).provider.secret().get() == "first-secret"
    path.write_text("rotated-secret\r\n")
    # A SIGHUP reload is load_config again: the rotated secret is what the new configuration holds.
    loaded = load_config(config, environ={})
    assert loaded.provider.secret().get() == "rotated-secret" and "rotated" not in repr(loaded)


@pytest.mark.parametrize(("content", "fragment"), [(None, "no such file"), ("", "is empty"), ("\n", "is empty"),
                                                   ("a\nb\n", "more than one line")])
def test_a_bad_secret_file_is_named(tmp_path, content, fragment):
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    found = problems({"client_secret_file": str(path)})
    assert fragment in found["provider.client_secret_file"] and str(path) in found["provider.client_secret_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_secret_file_says_to_make_it_readable(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s")
    path.chmod(0)
    assert "make it readable" in problems({"client_secret_file": str(path)})["provider.client_secret_file"]


def test_secret_and_secret_file_together_are_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("s")
    found = problems({"client_secret": "x", "client_secret_file": str(path)})
    assert "remove client_secret or client_secret_file" in found["provider.client_secret_file"]


@pytest.mark.parametrize(("content", "fragment"), [
    ("hello", "neither PEM"),
    ("{not json", "not; give a JWK"),
    ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no RSA, EC or Ed25519 key"),
    ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "is encrypted"),
    (RSAKey.generate_key(2048).as_pem(private=False), "holds a public key"),
    (json.dumps(ECKey.generate_key("P-256").as_dict(private=False)), "holds a public key"),
    (json.dumps({"keys": []}), "0 private keys; keep exactly one"),
    (json.dumps({"kty": "oct", "k": "AAAA"}), "not an RSA, EC or OKP JWK"),
    (json.dumps({**ECKey.generate_key("P-256", private=True).as_dict(private=True), "alg": "RS256"}),
     "cannot sign with"),
    (SMALL_RSA, "2048 bits or more"),
], ids=["text", "bad-json", "bad-pem", "encrypted", "public-pem", "public-jwk", "empty-set", "oct", "wrong-alg",
        "small-rsa"])
def test_a_bad_key_file_stops_start_up_naming_the_file_and_the_fix(tmp_path, content, fragment):
    message = key_problem(tmp_path, content)
    assert fragment in message and str(tmp_path / "key") in message


def test_a_missing_key_file_is_named(tmp_path):
    found = problems({"token_endpoint_auth_method": "private_key_jwt", "private_key_file": str(tmp_path / "nope")})
    assert "no such file" in found["provider.private_key_file"]


def test_each_method_wants_its_own_credential_only(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(RSAKey.generate_key(2048, private=True).as_pem(private=True))
    assert "required with token_endpoint_auth_method private_key_jwt" in problems(
        {"token_endpoint_auth_method": "private_key_jwt"})["provider.private_key_file"]
    assert "sends no client secret" in problems(
        {"token_endpoint_auth_method": "none", "client_secret": "s"})["provider.client_secret"]
    assert "used only with token_endpoint_auth_method private_key_jwt" in problems(
        {"client_secret": "s", "private_key_file": str(path)})["provider.private_key_file"]
    assert "used only with" in problems({"client_secret": "s", "client_assertion_audience": "issuer"})[
        "provider.client_assertion_audience"]


def test_the_key_never_shows_in_a_repr(tmp_path):
    key = RSAKey.generate_key(2048, private=True)
    path = tmp_path / "key.pem"
    path.write_bytes(key.as_pem(private=True))
    config = make_config(provider={"client_secret": None, "token_endpoint_auth_method": "private_key_jwt",
                                   "private_key_file": str(path)})
    shown = repr(config) + str(config.provider.model_dump(mode="json"))
    assert key.as_dict(private=True)["d"] not in shown and str(path) in shown


def test_a_certificate_of_another_key_or_none_at_all_is_named(tmp_path):
    from tests.support.certs import self_signed_pem

    key = tmp_path / "key.pem"
    key.write_bytes(RSAKey.generate_key(2048, private=True).as_pem(private=True))
    other = tmp_path / "other.pem"
    other.write_bytes(self_signed_pem(RSAKey.generate_key(2048, private=True)))
    base = {"token_endpoint_auth_method": "private_key_jwt", "private_key_file": str(key)}
    found = problems({**base, "private_key_certificate_file": str(other)})
    assert "certificate of another key" in found["provider.private_key_certificate_file"]
    found = problems({**base, "private_key_certificate_file": str(key)})
    assert "holds no PEM certificate" in found["provider.private_key_certificate_file"]
