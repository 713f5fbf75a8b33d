"""How authproxy proves to the token endpoint that it is the client: ``token_endpoint_auth_method``.

- ``client_secret_basic`` / ``client_secret_post`` (RFC 6749 §2.3.1): the secret in HTTP Basic or the form;
- ``client_secret_jwt`` (OIDC Core §9, RFC 7523 §2.2): an assertion signed HS256 with the secret, which
  then never crosses the wire;
- ``private_key_jwt`` (same sections): an assertion signed with the client's private key — no shared
  secret at all; the provider holds the public key (registered, or at a ``jwks_uri``);
- ``none`` (RFC 7636, RFC 8252 §8.4): a public client; PKCE alone binds the code to this proxy.

The assertion's claims (RFC 7523 §3): ``iss`` = ``sub`` = client_id; ``aud`` the provider's issuer, one
string — what the OpenID Foundation's 2025 advisory on audience injection and OIDC Core §9 (errata set 2)
ask for, and what an assertion cannot be replayed at another endpoint of the same provider with — or the
token endpoint URL when ``client_assertion_audience: token_endpoint`` says so (providers such as Entra ID
and Okta want that); a fresh ``jti`` each time (providers refuse a replay); ``exp`` ``ASSERTION_LIFETIME``
ahead. The signing algorithm is the first the key can make that the provider lists in
``token_endpoint_auth_signing_alg_values_supported`` (Discovery §3); signing is joserfc's.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Callable
from urllib.parse import quote_plus

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from ..config import ProviderConfig
from ..crypto import random_token
from ..errors import ProviderError
from .metadata import Metadata

# Seconds a client assertion is valid: long enough for the request to arrive, short against replay.
ASSERTION_LIFETIME = 60
# RFC 7521 §4.2: the client_assertion_type of a JWT assertion.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# HMAC algorithms for client_secret_jwt, most widely accepted first (RFC 7518 §3.2).
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")


def assertion_algorithm(config: ProviderConfig, meta: Metadata) -> str | None:
    """The JWS algorithm of this client's assertions, or None if it sends none; a ``ProviderError``
    naming both lists when the provider accepts none of the algorithms the key can sign with."""
    method = config.token_endpoint_auth_method
    if method == "private_key_jwt" and config.private_key_file is not None:
        possible = config.private_key_file.algorithms
    elif method == "client_secret_jwt":
        possible = HMAC_ALGORITHMS
    else:
        return None
    offered = meta.token_endpoint_auth_signing_alg_values_supported
    if not offered:
        return possible[0]
    for alg in possible:
        if alg in offered:
            return alg
    raise ProviderError("discovery", f"the provider accepts client assertions signed with {', '.join(offered)[:200]}"
                        f" only, but {method} here can sign with {', '.join(possible)}; "
                        + ("use a key of a kind it accepts" if method == "private_key_jwt" else
                           "use private_key_jwt or client_secret_basic"))


def check_method(config: ProviderConfig, meta: Metadata) -> None:
    """Discovery §3: a provider that lists its methods and lacks ours would refuse every grant — say so
    at start-up, with the methods it has."""
    offered = meta.token_endpoint_auth_methods_supported
    method = config.token_endpoint_auth_method
    if offered and method not in offered:
        raise ProviderError("discovery", f"the provider does not accept token_endpoint_auth_method {method}; it "
                            f"lists {', '.join(offered)[:200]}: set one of them (and register the client for it)")


class ClientAuthentication:
    """Adds this client's credentials to each request to the token endpoint (and to the PAR endpoint,
    which authenticates the same way: RFC 9126 §2)."""

    def __init__(self, config: ProviderConfig, meta: Metadata, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._algorithm = assertion_algorithm(config, meta)
        self._audience = (config.issuer if config.client_assertion_audience != "token_endpoint" and config.issuer
                          else meta.token_endpoint)

    def apply(self, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """The request's form and headers, with the credentials of ``token_endpoint_auth_method``."""
        config, method = self._config, self._config.token_endpoint_auth_method
        if method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(config.client_id)}:{quote_plus(self._secret())}".encode()
            return form, {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if method == "client_secret_post":
            return {**form, "client_id": config.client_id, "client_secret": self._secret()}, {}
        if method == "none":
            return {**form, "client_id": config.client_id}, {}
        return {**form, "client_id": config.client_id, "client_assertion_type": JWT_BEARER,
                "client_assertion": self.assertion()}, {}

    def assertion(self) -> str:
        """A new signed client assertion (RFC 7523 §3), used once."""
        config, now = self._config, int(self._clock())
        assert self._algorithm is not None
        header = {"alg": self._algorithm, "typ": "JWT"}
        claims = {"iss": config.client_id, "sub": config.client_id, "aud": self._audience, "jti": random_token(),
                  "iat": now, "exp": now + ASSERTION_LIFETIME}
        # joserfc warns that RFC 9864 renamed "EdDSA", and of a secret shorter than 112 bits: the algorithm
        # is the provider's choice, the secret the provider's to issue.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key: RSAKey | ECKey | OKPKey | OctKey
            if config.token_endpoint_auth_method == "private_key_jwt":
                assert config.private_key_file is not None
                key = config.private_key_file.key
                if config.key_id:
                    header["kid"] = config.key_id
                cert = config.private_key_certificate_file
                if cert is not None:            # RFC 7515 §4.1.7–8: the key named by its certificate (Entra ID)
                    header.update({"x5t": cert.x5t, "x5t#S256": cert.x5t_s256})
            else:
                key = OctKey.import_key(self._secret().encode())
            return jwt.encode(header, claims, key, algorithms=[self._algorithm])

    def _secret(self) -> str:
        secret = self._config.secret()
        if secret is None:      # config validation makes every secret method carry one
            raise ProviderError("client authentication", f"{self._config.token_endpoint_auth_method} needs a "
                                "client secret")
        return secret.get()
