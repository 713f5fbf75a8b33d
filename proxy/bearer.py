"""Bearer passthrough: API clients that send ``Authorization: Bearer <JWT>`` instead of a cookie.

With ``provider.accept_bearer_tokens`` on, such a request is judged by its token alone — the session
cookie is not consulted, and a token that fails is a 401 with ``WWW-Authenticate: Bearer
error="invalid_token"`` (RFC 6750 §3.1), never a redirect and never a fallback to the cookie: a
client that sent a token wants to know that its token is bad.

As joserfc separates them, checking is two steps. First the signature: the ``alg`` must be in
``provider.id_token_algorithms`` (never ``none``, never HMAC), and the key comes from the provider's
JWKS through the provider's own cached, rate-limited lookup. Then the claims (RFC 7519 §4.1) with
the app's clock and ``provider.clock_skew``: ``iss`` is the provider's issuer, ``aud`` holds one of
``provider.bearer_audiences`` (default: the client id), ``exp`` is in the future, ``nbf`` (if any)
in the past. The identity comes from the claims at the configured claim paths, as for a session.

The result is a ``Session`` that lives for this request only (never written to a cookie), so the
gate authorizes and forwards it like any other: upstream gets the same token as ``Bearer`` plus
identity headers. With the option off, a client's ``Authorization`` header is ignored and
stripped by the forwarder as always.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from joserfc import jws, jwt
from joserfc.errors import JoseError

from .errors import AuthProxyError, TokenValidationError
from .provider import Provider
from .session import Session

# RFC 6750 §2.1: "Bearer" 1*SP b64token. Longer tokens than this are refused before any parsing.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
MAX_TOKEN_LENGTH = 8192


class BearerRejected(AuthProxyError):
    """A bearer token that is malformed, badly signed, expired or not for us; ``code`` names the check.

    The gate answers it with 401 ``invalid_token``; the detail goes to the log only.
    """

    status = 401
    title = "Invalid access token"

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        super().__init__(f"The bearer token was refused ({code}): {detail}.")


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None when the request has no such header.

    Raises BearerRejected for a Bearer header that is not one well-formed token, or for several.
    """
    values = request.headers.getall("Authorization", [])
    if not any(v.lstrip()[:6].lower() == "bearer" for v in values):
        return None
    if len(values) != 1:
        raise BearerRejected("malformed", "more than one Authorization header")
    match = _BEARER.fullmatch(values[0].strip())
    if match is None or len(match[1]) > MAX_TOKEN_LENGTH:
        raise BearerRejected("malformed", "the Authorization header is not one Bearer token")
    return match[1]


async def verify_bearer(provider: Provider, token: str, *, now: float) -> Session:
    """The request-only Session for a valid token; BearerRejected otherwise.

    ProviderError (the JWKS could not be fetched) passes through: that is our outage, not a bad
    token, and the client should retry rather than throw its token away.
    """
    claims = await verify_signature(provider, token)
    c = provider.config
    check_claims(claims, issuer=c.issuer, audiences=c.bearer_audiences or [c.client_id], now=now,
                 skew=c.clock_skew)
    try:
        identity = provider.identity_from(claims)
    except TokenValidationError as exc:
        raise BearerRejected(exc.code, "the token does not say who the user is") from None
    return Session(identity=identity, access_token=token, created_at=now, issued_at=now,
                   expires_at=float(claims["exp"]), id="bearer")


async def verify_signature(provider: Provider, token: str) -> dict[str, Any]:
    """The claims of a compact JWS signed by one of the provider's keys with an allowed algorithm."""
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise BearerRejected("malformed", "not a compact JWS") from None
    alg = header.get("alg")
    if alg not in provider.config.id_token_algorithms:
        raise BearerRejected("alg", f"signed with {str(alg)[:20]!r}, which is not in provider.id_token_algorithms")
    try:
        # Provider's cached, rate-limited JWKS lookup (see the report: to become public as
        # ``Provider.signing_key``; this is its only call site here).
        key = await provider.signing_key(header.get("kid"), alg)
    except TokenValidationError as exc:
        raise BearerRejected(exc.code, "no signing key of the provider fits") from None
    try:
        claims = jwt.decode(token, key, algorithms=[alg]).claims
    except (JoseError, ValueError) as exc:
        raise BearerRejected("signature", f"the signature does not verify ({type(exc).__name__})") from None
    if not isinstance(claims, dict):
        raise BearerRejected("malformed", "the payload is not a JSON object")
    return dict(claims)


def check_claims(claims: Mapping[str, Any], *, issuer: str | None, audiences: Sequence[str], now: float,
                 skew: float) -> None:
    """RFC 7519 §4.1 checks of ``iss``, ``aud``, ``exp`` and ``nbf``; BearerRejected names the first failure."""
    if issuer is None or claims.get("iss") != issuer:
        raise BearerRejected("iss", "issued by someone else")
    aud = claims.get("aud")
    present = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
    if not set(present) & set(audiences):
        raise BearerRejected("aud", "not meant for this proxy (provider.bearer_audiences)")
    exp = claims.get("exp")
    if not _is_number(exp) or exp + skew <= now:
        raise BearerRejected("exp", "expired, or no exp")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or nbf - skew > now):
        raise BearerRejected("nbf", "not valid yet")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def invalid_token_header() -> str:
    """``WWW-Authenticate`` for a refused token (RFC 6750 §3): the code only, never the detail."""
    return 'Bearer realm="authproxy", error="invalid_token"'
