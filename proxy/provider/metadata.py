"""The provider's endpoints: OpenID Connect Discovery 1.0, with explicit configuration taking precedence.

Read once at start-up (and retried in the background by ``app.py`` until it succeeds); every other step
takes its URLs from the ``Metadata`` it produces. A discovery document that names another issuer is
refused (Discovery §4.3): its endpoints would belong to someone else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ProviderConfig
from ..errors import ProviderError
from .client import ProviderClient


# OpenID Connect Discovery 1.0 §4: where the provider's metadata is, below its issuer.
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class Metadata:
    """The provider's endpoints (OpenID Connect Discovery 1.0 §3, or explicit configuration)."""

    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str | None = None
    jwks_uri: str | None = None
    end_session_endpoint: str | None = None
    # RFC 9207 §3: the provider promises an ``iss`` on every authorization response.
    authorization_response_iss_parameter_supported: bool = False
    # Discovery §3: what the token endpoint accepts; empty when the provider does not say.
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] = ()
    # RFC 9126 §5: where authorization requests are pushed, and whether the provider takes no others.
    pushed_authorization_request_endpoint: str | None = None
    require_pushed_authorization_requests: bool = False


async def discover(config: ProviderConfig, client: ProviderClient) -> Metadata:
    """Discovery (when an issuer is set), with explicitly configured endpoints taking precedence."""
    c = config
    found: Mapping[str, Any] = {}
    if c.needs_discovery and c.issuer:
        url = c.issuer.rstrip("/") + DISCOVERY_SUFFIX
        try:
            found = await client.get_json("discovery", url)
        except ProviderError as exc:
            raise ProviderError("discovery", f"{exc.detail} for {url}; check that provider.issuer is the issuer "
                                "URL itself (the document's \"issuer\" value), which discovery appends "
                                f"{DISCOVERY_SUFFIX} to", transient=exc.transient) from None
        if found.get("issuer") != c.issuer:
            raise ProviderError("discovery", _issuer_mismatch(c.issuer, found.get("issuer"), url))

    def pick(name: str) -> str | None:
        value = getattr(c, name) or found.get(name)
        return value if isinstance(value, str) and value else None

    auth, token = pick("authorization_endpoint"), pick("token_endpoint")
    if not auth or not token:
        raise ProviderError("discovery", "no authorization_endpoint or token_endpoint is known")
    return Metadata(issuer=c.issuer, authorization_endpoint=auth, token_endpoint=token,
                    userinfo_endpoint=pick("userinfo_endpoint"), jwks_uri=pick("jwks_uri"),
                    end_session_endpoint=pick("end_session_endpoint"),
                    authorization_response_iss_parameter_supported=found.get(
                        "authorization_response_iss_parameter_supported") is True,
                    token_endpoint_auth_methods_supported=_names(found, "token_endpoint_auth_methods_supported"),
                    token_endpoint_auth_signing_alg_values_supported=_names(
                        found, "token_endpoint_auth_signing_alg_values_supported"),
                    pushed_authorization_request_endpoint=pick("pushed_authorization_request_endpoint"),
                    require_pushed_authorization_requests=found.get("require_pushed_authorization_requests") is True)


def _issuer_mismatch(configured: str, named: object, url: str) -> str:
    """Discovery §4.3's refusal, saying what to set when the two differ only in the trailing slash."""
    shown = str(named)[:200]
    text = f"the document at {url} names issuer {shown!r}, not the configured {configured!r}"
    if isinstance(named, str) and named.rstrip("/") == configured.rstrip("/"):
        return (f"{text}: they differ only in the trailing '/', which must match exactly (ID tokens carry the "
                f"provider's spelling); set provider.issuer: {named!r}")
    return text + " (OpenID Connect Discovery §4.3); set provider.issuer to the issuer your provider documents"


def _names(found: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list of strings from the document; anything else there counts as not said."""
    value = found.get(name)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))
