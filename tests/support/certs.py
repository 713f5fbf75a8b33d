"""A self-signed certificate for a joserfc key, for tests of ``provider.private_key_certificate_file``."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, RSAKey


def self_signed_pem(key: RSAKey | ECKey, name: str = "authproxy") -> bytes:
    """A PEM certificate of ``key``'s public key, signed by ``key``, valid for a day."""
    private = key.private_key
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(private, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)
