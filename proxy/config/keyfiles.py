"""Credentials kept in files: ``provider.client_secret_file`` and ``provider.private_key_file``.

Read while the configuration is validated, so a file that is missing, unreadable or holds no usable
key stops start-up (and a SIGHUP reload, which reads them again: a rotated secret or key takes effect
with the next reload) with the key's path and how to fix it — never on the first sign-in. Reading is
the only thing done here: nothing is built, nothing written. The values are held redacted (``Secret``,
``ClientKey``): neither ``repr`` nor an error message shows them.

The optional certificate (``private_key_certificate_file``) is for providers that name the key by its
certificate's thumbprint (``x5t``, ``x5t#S256``; RFC 7515 §4.1.7–8), as Entra ID does; it must hold the
private key's public half.

The private key signs ``private_key_jwt`` client assertions (RFC 7523 §2.2, OIDC Core §9); it may be
PEM (PKCS#8, PKCS#1 or SEC 1, unencrypted) or a JWK, or a JWK set holding one private key. Parsing is
joserfc's: no JOSE of our own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import warnings
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from .values import Secret

# Largest file read as a secret or a key: a JWK set of a few RSA keys fits many times over.
MAX_CREDENTIAL_FILE_BYTES = 64 * 1024

# The JWS algorithms (RFC 7518 §3.1, RFC 8037) each kind of key can sign with, most widely accepted
# first: the first one the provider lists in token_endpoint_auth_signing_alg_values_supported is used.
_RSA_ALGORITHMS = ("RS256", "PS256", "RS384", "PS384", "RS512", "PS512")
_CURVE_ALGORITHMS = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",), "secp256k1": ("ES256K",),
                     "Ed25519": ("EdDSA", "Ed25519")}

AnyKey = RSAKey | ECKey | OKPKey


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CREDENTIAL_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(f"no such file {path!r}; give the path of the file holding the {what}") from None
    except OSError as exc:
        raise ValueError(f"{path!r} cannot be read ({exc.strerror}); make it readable by the user authproxy "
                         "runs as") from None
    if len(data) > MAX_CREDENTIAL_FILE_BYTES:
        raise ValueError(f"{path!r} is larger than {MAX_CREDENTIAL_FILE_BYTES // 1024} KiB; it should hold only "
                         f"the {what}")
    return data


def read_secret_file(value: object) -> object:
    """``client_secret_file``: the file's text without its trailing line break, as a ``Secret``."""
    if not isinstance(value, str) or not value:
        return value            # Secret's own validation says what is wrong
    try:
        text = _read(value, "client secret").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{value!r} is not UTF-8 text; write the client secret as text") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"{value!r} is empty; write the client secret the provider gave you into it")
    if "\n" in secret or "\r" in secret:
        raise ValueError(f"{value!r} has more than one line; it should hold only the client secret")
    return Secret(secret)


class ClientKey:
    """The private key of ``private_key_jwt``, with its ``kid`` and the algorithms it can sign with.

    Redacted like ``Secret``: its ``repr`` names only the file and the kind of key."""

    __slots__ = ("algorithms", "key", "kid", "path")

    def __init__(self, path: str, key: AnyKey, kid: str | None, algorithms: tuple[str, ...]) -> None:
        self.path = path
        self.key = key
        self.kid = kid
        self.algorithms = algorithms

    def __repr__(self) -> str:
        return f"ClientKey({self.path!r}, {self.key.key_type}, kid={self.kid!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientKey):
            return NotImplemented
        return self.path == other.path and self.key.thumbprint() == other.key.thumbprint() and self.kid == other.kid

    def __hash__(self) -> int:
        return hash((self.path, self.kid))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        as_path = core_schema.plain_serializer_function_ser_schema(lambda key: key.path, when_used="json")
        return core_schema.no_info_plain_validator_function(load_client_key, serialization=as_path,
                                                            json_schema_input_schema=core_schema.str_schema())


def load_client_key(value: object) -> ClientKey:
    """``private_key_file``: a PEM or JWK private key, or the ``ValueError`` that says how to fix the file."""
    if isinstance(value, ClientKey):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected the path of a PEM or JWK file holding the client's private key")
    data = _read(value, "client's private key")
    stripped = data.strip()
    with warnings.catch_warnings():         # joserfc warns of a small RSA key: _algorithms() refuses it instead
        warnings.simplefilter("ignore")
        if stripped.startswith(b"{"):
            key, kid, alg = _from_jwk(value, stripped)
        elif b"-----BEGIN" in stripped:
            key, kid, alg = _from_pem(value, stripped), None, None
        else:
            key = None
    if key is None:
        raise ValueError(f"{value!r} is neither PEM (-----BEGIN PRIVATE KEY-----) nor a JWK (JSON); give the "
                         "client's private key in one of these forms")
    if not key.is_private:
        raise ValueError(f"{value!r} holds a public key; give the private key (register the public key, or a "
                         "JWK set of it, with the provider)")
    algorithms = _algorithms(key)
    if alg is not None:
        if alg not in algorithms:
            raise ValueError(f"{value!r} says alg {alg!r}, which a {_kind(key)} key cannot sign with; "
                             f"use one of {', '.join(algorithms)} or remove alg")
        algorithms = (alg,)
    if not algorithms:
        raise ValueError(f"{value!r} is a {_kind(key)} key, which cannot sign a client assertion authproxy "
                         "sends; use an RSA key of 2048 bits or more, or a P-256, P-384, P-521 or Ed25519 key")
    return ClientKey(value, key, kid, algorithms)


def _from_pem(path: str, data: bytes) -> AnyKey:
    if b"ENCRYPTED" in data:
        raise ValueError(f"{path!r} is encrypted; store it decrypted (e.g. `openssl pkey -in KEY -out "
                         f"{os.path.basename(path)}`) and protect it with file permissions")
    kinds: tuple[type[AnyKey], ...] = (RSAKey, ECKey, OKPKey)
    for kind in kinds:
        try:
            return kind.import_key(data)
        except (JoseError, ValueError, TypeError):
            continue
    raise ValueError(f"{path!r} holds no RSA, EC or Ed25519 key that can be read; give an unencrypted PEM "
                     "private key (-----BEGIN PRIVATE KEY-----)")


def _from_jwk(path: str, data: bytes) -> tuple[AnyKey, str | None, str | None]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError(f"{path!r} starts like JSON but is not; give a JWK or a JWK set") from None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        private = [k for k in doc["keys"] if isinstance(k, dict) and "d" in k]
        if len(private) != 1:
            raise ValueError(f"{path!r} is a JWK set with {len(private)} private keys; keep exactly one in it "
                             "(the one registered with the provider)")
        doc = private[0]
    if not isinstance(doc, dict) or doc.get("kty") not in ("RSA", "EC", "OKP"):
        raise ValueError(f"{path!r} is not an RSA, EC or OKP JWK; give the client's private key as a JWK")
    try:
        key = import_key(doc)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"{path!r} is not a usable JWK ({type(exc).__name__}); check its members") from None
    kid, alg = doc.get("kid"), doc.get("alg")
    return key, kid if isinstance(kid, str) and kid else None, alg if isinstance(alg, str) else None  # type: ignore[return-value]


def _algorithms(key: AnyKey) -> tuple[str, ...]:
    if isinstance(key, RSAKey):
        bits = len(str(key.as_dict(private=False)["n"])) * 6      # base64url: 6 bits a character
        return _RSA_ALGORITHMS if bits >= 2040 else ()
    return _CURVE_ALGORITHMS.get(str(key.as_dict().get("crv")), ())


def _kind(key: AnyKey) -> str:
    return key.key_type if isinstance(key, RSAKey) else f"{key.key_type} {key.as_dict().get('crv')}"


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL)


class ClientCertificate:
    """The X.509 certificate of the client's key: its thumbprints for the ``x5t`` headers."""

    __slots__ = ("key_thumbprint", "path", "x5t", "x5t_s256")

    def __init__(self, path: str, der: bytes, key_thumbprint: str) -> None:
        self.path = path
        self.x5t = _b64url(hashlib.sha1(der).digest())            # RFC 7515 §4.1.7: SHA-1 of the DER
        self.x5t_s256 = _b64url(hashlib.sha256(der).digest())     # §4.1.8
        self.key_thumbprint = key_thumbprint

    def __repr__(self) -> str:
        return f"ClientCertificate({self.path!r}, x5t#S256={self.x5t_s256})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientCertificate) and (self.path, self.x5t_s256) == (other.path, other.x5t_s256)

    def __hash__(self) -> int:
        return hash((self.path, self.x5t_s256))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        as_path = core_schema.plain_serializer_function_ser_schema(lambda cert: cert.path, when_used="json")
        return core_schema.no_info_plain_validator_function(load_certificate, serialization=as_path,
                                                            json_schema_input_schema=core_schema.str_schema())


def load_certificate(value: object) -> ClientCertificate:
    """``private_key_certificate_file``: the first PEM certificate of the file."""
    if isinstance(value, ClientCertificate):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected the path of a PEM file holding the client's certificate")
    data = _read(value, "client's certificate")
    found = _PEM_CERTIFICATE.search(data)
    if found is None:
        raise ValueError(f"{value!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the certificate "
                         "uploaded to the provider")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = _from_pem(value, found.group(0))
    except (binascii.Error, ValueError):
        raise ValueError(f"{value!r} holds a certificate that cannot be read; give the PEM certificate uploaded "
                         "to the provider") from None
    return ClientCertificate(value, der, key.thumbprint())


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
