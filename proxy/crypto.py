"""Sealing values for the browser, random values and PKCE — the only module that imports ``cryptography``.

A sealed value is ``"1." + base64url(key_id ‖ nonce ‖ AES-256-GCM ciphertext+tag)``:

- the leading ``1.`` is the format version, so a later format can be told apart and old cookies
  rejected cleanly rather than misread;
- each configured cookie secret is stretched with HKDF-SHA256 (RFC 5869) into the AEAD key, so the
  raw secret is never used directly and a future second purpose gets its own derived key;
- ``key_id`` is 4 bytes of a hash of the derived key: opening picks the right key at once, which
  makes secret rotation (first key seals, every key opens) cost nothing per request;
- the associated data binds the value to its purpose — the cookie's name — so a value cut from one
  cookie and pasted into another does not open.

AES-GCM with random 96-bit nonces is safe for far more values than one proxy ever seals under one key
(NIST SP 800-38D §8.3 bounds it at 2^32).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CookieError

VERSION = "1."
_KEY_ID_LEN = 4
_NONCE_LEN = 12
_TAG_LEN = 16
_HKDF_INFO = b"authproxy cookie sealing v1"
# A second purpose of the cookie secret, so its own key: naming users and sessions in a store's keys.
_BLIND_INFO = b"authproxy store key names v1"


# The base64url alphabet (RFC 4648 §5), unpadded: the only characters ``b64url_encode`` writes.
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64URL_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly and canonically; ``ValueError`` for anything else.

    Only the text ``b64url_encode`` would write for the same bytes is accepted (RFC 4648 §3.5): no
    padding, no character outside the alphabet, no length that leaves a lone character, no set bits
    past the last byte. Python's decoder skips junk and ignores those bits, so without this one
    sealed value had endless spellings (``.`` or ``~`` inserted anywhere), each a new entry in any
    cache keyed on the text and a new AES-GCM open."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    spare_bits = {0: 0, 2: 4, 3: 2}[len(text) % 4]
    if spare_bits and _B64URL_DIGITS.index(text[-1]) & ((1 << spare_bits) - 1):
        raise ValueError("not canonical base64url (bits set past the last byte)")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(secret: bytes, info: bytes = _HKDF_INFO) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


class Sealer:
    """Seals and opens short values with the configured secrets; the first secret seals."""

    def __init__(self, secrets_: Sequence[bytes]) -> None:
        if not secrets_:
            raise ValueError("at least one secret is needed")
        self._ciphers: dict[bytes, AESGCM] = {}
        self._seal_id = b""
        for index, secret in enumerate(secrets_):
            key = derive_key(secret)
            key_id = hashlib.sha256(key).digest()[:_KEY_ID_LEN]
            self._ciphers.setdefault(key_id, AESGCM(key))
            if index == 0:
                self._seal_id = key_id
        self._blind_key = derive_key(secrets_[0], _BLIND_INFO)

    def blind(self, value: str) -> str:
        """A stable name for ``value`` (a ``sub``, ``sid`` or ``jti``) that only holders of the cookie
        secret can compute: HMAC-SHA256 under a key derived for this purpose. A plain hash of a ``sub``
        could be reversed by hashing guessed user names; this cannot without the secret."""
        return hmac.new(self._blind_key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def seal(self, plaintext: bytes, associated_data: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE_LEN)
        ciphertext = self._ciphers[self._seal_id].encrypt(nonce, plaintext, associated_data)
        return VERSION + b64url_encode(self._seal_id + nonce + ciphertext)

    def open(self, sealed: str, associated_data: bytes) -> bytes:
        """Return the plaintext, or raise ``CookieError`` saying why it cannot be trusted."""
        return self.open_raw(self.unwrap(sealed), associated_data)

    @staticmethod
    def unwrap(sealed: str) -> bytes:
        """The sealed bytes of a value, before any key is tried; ``CookieError`` if it is not in the
        format ``seal`` writes. The decoding is canonical, so one sealed value has one spelling: a
        cache of opened values can be keyed on these bytes (``cookies.CookieCodec``)."""
        if not sealed.startswith(VERSION):
            raise CookieError("unknown format version")
        try:
            raw = b64url_decode(sealed[len(VERSION):])
        except (binascii.Error, ValueError) as exc:
            raise CookieError("not canonical base64url") from exc
        if len(raw) < _KEY_ID_LEN + _NONCE_LEN + _TAG_LEN:
            raise CookieError("too short")
        return raw

    def open_raw(self, raw: bytes, associated_data: bytes) -> bytes:
        """Open bytes from ``unwrap``: the plaintext, or ``CookieError``."""
        key_id, nonce = raw[:_KEY_ID_LEN], raw[_KEY_ID_LEN:_KEY_ID_LEN + _NONCE_LEN]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CookieError("sealed with a key that is not configured")
        try:
            return cipher.decrypt(nonce, raw[_KEY_ID_LEN + _NONCE_LEN:], associated_data)
        except InvalidTag as exc:
            raise CookieError("failed authentication (tampered, truncated or another purpose)") from exc


# The order of P-256's base point: a private key is an integer in [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ASSERTION_INFO = b"authproxy identity assertion ES256 v1"


def assertion_signing_key(secret: bytes) -> ec.EllipticCurvePrivateKey:
    """The P-256 key that signs identity assertions, derived from a cookie secret (HKDF with its own
    ``info``, so it shares nothing with the sealing key): every worker and replica with the same secrets
    signs with the same key and publishes the same JWKS, with no key file to distribute, and rotating
    the cookie secret rotates it. 48 bytes reduced modulo n - 1 keep the bias below 2^-128 (FIPS 186-5
    A.2.1's "extra random bits" method)."""
    material = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=_ASSERTION_INFO).derive(secret)
    scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def random_token(nbytes: int = 32) -> str:
    """A URL-safe random string: ``state``, ``nonce``, session ids."""
    return secrets.token_urlsafe(nbytes)


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 §4.1–4.2): 43 chars of 32 random bytes."""
    verifier = secrets.token_urlsafe(32)
    challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


def fingerprint(value: str) -> str:
    """A short, non-reversible name for a secret value: cache keys and log correlation."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]


def tls_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context that trusts the system's CAs *and* the operator's extra bundle, if any."""
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


def certificate_dates(pem: bytes) -> tuple[int, float, float] | None:
    """The first PEM certificate's (serial, not-before, not-after as Unix times), or None when there is none:
    what ``tls.py`` logs of the certificate it serves, and how it knows one is about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return cert.serial_number, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
