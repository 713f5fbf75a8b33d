import base64

import pytest

from proxy.crypto import Sealer, b64url_decode, b64url_encode, pkce_pair, random_token
from proxy.errors import CookieError

A, B = b"a" * 32, b"b" * 32


def test_round_trip_and_version_prefix():
    sealer = Sealer([A])
    sealed = sealer.seal(b"hello", b"name")
    assert sealed.startswith("1.")
    assert b"hello" not in b64url_decode(sealed[2:])
    assert sealer.open(sealed, b"name") == b"hello"


def test_each_seal_is_different():
    sealer = Sealer([A])
    assert sealer.seal(b"x", b"n") != sealer.seal(b"x", b"n")


@pytest.mark.parametrize("position", [2, 5, 10, 20, -1])
def test_any_flipped_character_fails(position):
    sealer = Sealer([A])
    sealed = sealer.seal(b"payload" * 10, b"n")
    chars = list(sealed)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(CookieError):
        sealer.open("".join(chars), b"n")


def test_truncated_fails():
    sealer = Sealer([A])
    sealed = sealer.seal(b"payload" * 10, b"n")
    for cut in (3, 10, len(sealed) - 1):
        with pytest.raises(CookieError):
            sealer.open(sealed[:cut], b"n")


def test_other_purpose_fails():
    sealer = Sealer([A])
    with pytest.raises(CookieError, match="authentication"):
        sealer.open(sealer.seal(b"x", b"one"), b"two")


def test_other_secret_fails():
    with pytest.raises(CookieError, match="not configured"):
        Sealer([B]).open(Sealer([A]).seal(b"x", b"n"), b"n")


def test_rotation_first_seals_all_open():
    old = Sealer([A]).seal(b"old", b"n")
    rotated = Sealer([B, A])
    assert rotated.open(old, b"n") == b"old"
    new = rotated.seal(b"new", b"n")
    assert Sealer([B]).open(new, b"n") == b"new"
    with pytest.raises(CookieError):
        Sealer([A]).open(new, b"n")


@pytest.mark.parametrize("junk", ["", "1.", "2.abc", "1.!!!!", "1." + "A" * 10, "abc"])
def test_junk_is_cookie_error(junk):
    with pytest.raises(CookieError):
        Sealer([A]).open(junk, b"n")


def test_pkce_s256():
    import hashlib
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def test_random_tokens_differ_and_are_urlsafe():
    values = {random_token() for _ in range(50)}
    assert len(values) == 50
    assert all(set(v) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for v in values)


def test_b64url_round_trip():
    for data in (b"", b"\x00", b"\xff" * 7):
        assert b64url_decode(b64url_encode(data)) == data


@pytest.mark.parametrize("text", [
    "QUJD=", "QUJDRA==", "QUJD.", "QU.JD", "QU~JD", "QU+JD", "QU/JD", "QU JD", "QUJD\n", "Q", "QUJDR",
    "QUJDRB", "QUJDRE", "QUJ", "\u0661\u0662\u0663\u0664",
])
def test_b64url_decode_accepts_only_the_canonical_spelling(text):
    """One spelling per byte string (RFC 4648 §3.5): junk, padding, a lone last character and bits set past
    the last byte are refused, where Python's decoder let them through."""
    with pytest.raises(ValueError):
        b64url_decode(text)


def test_b64url_decode_accepts_every_canonical_length():
    for n in range(0, 40):
        data = bytes(range(n))
        assert b64url_decode(b64url_encode(data)) == data


def test_a_respelled_sealed_value_does_not_open():
    s = Sealer([A])
    sealed = s.seal(b"hello", b"purpose")
    for variant in (sealed[:6] + "...." + sealed[6:], sealed[:6] + "~~~~" + sealed[6:], sealed + "=="):
        with pytest.raises(CookieError, match="base64url"):
            s.open(variant, b"purpose")
    assert s.open_raw(Sealer.unwrap(sealed), b"purpose") == b"hello"


def test_extra_ca_file_adds_to_the_system_cas(tmp_path):
    from proxy.crypto import tls_context
    from tests.support.tls import self_signed
    cert, _ = self_signed(tmp_path)
    system = tls_context(None).cert_store_stats()["x509_ca"]
    with_extra = tls_context(str(cert)).cert_store_stats()["x509_ca"]
    assert with_extra == system + 1 and system > 0
