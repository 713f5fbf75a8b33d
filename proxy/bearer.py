"""Bearer passthrough: API clients that send ``Authorization: Bearer <JWT>`` instead of a cookie.

With ``provider.accept_bearer_tokens`` on, such a request is judged by its token alone — the session
cookie is not consulted, and a token that fails is a 401 with ``WWW-Authenticate: Bearer
error="invalid_token"`` (RFC 6750 §3.1), never a redirect and never a fallback to the cookie: a
client that sent a token wants to know that its token is bad.

The token must be a JWT access token of the provider (RFC 9068): the provider's one validator
(``Provider.verify_access_token``, see ``tokens.py``) checks its signature against the JWKS with the
``provider.id_token_algorithms`` allow-list, its claims with the app's clock and
``provider.clock_skew`` (``iss``, ``aud`` in ``provider.bearer_audiences`` — default: the client id —,
``exp``, ``nbf``, ``iat``), and that it is an access token: typed ``at+jwt`` or one of
``provider.bearer_token_types``, and never an ID token (``nonce``) or a logout token (``events``,
``logout+jwt``). The identity comes from the claims at the configured claim paths, as for a session.

Its ``acr`` and ``auth_time`` claims (RFC 9068 §2.2.1) are what a route's step-up rule judges it on
(``stepup.py``): a token without them does not meet a rule that asks, and its client gets RFC 9470's 401.

The result is a ``Session`` that lives for this request only (never written to a cookie), so the
gate authorizes and forwards it like any other: upstream gets the same token as ``Bearer`` plus
identity headers. With the option off, a client's ``Authorization`` header is ignored and
stripped by the forwarder as always.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import BearerRejected, TokenValidationError
from .session import Session
from .stepup import authentication

if TYPE_CHECKING:
    from .provider import Provider

__all__ = ["BEARER_SESSION", "bearer_token", "invalid_token_header", "verify_bearer"]

# RFC 6750 §2.1: "Bearer" 1*SP b64token. Longer tokens than this are refused before any parsing.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
MAX_TOKEN_LENGTH = 8192
# The id of the request-only session a token makes: it names no stored session, and cannot sign in again.
BEARER_SESSION = "bearer"


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
    """The request-only Session for a valid access token; BearerRejected otherwise.

    ProviderError (the JWKS could not be fetched) passes through: that is our outage, not a bad
    token, and the client should retry rather than throw its token away.
    """
    try:
        claims = await provider.verify_access_token(token)
        if provider.groups_overflowed(claims):
            # An access token for our API cannot read Graph; without its groups, rules on groups would
            # be decided on none: refused, so the client learns it rather than being judged wrongly.
            raise TokenValidationError("groups_overage", "the token's groups overflowed it (Entra ID), and a "
                                       "bearer token's groups cannot be read from Microsoft Graph")
        identity = provider.identity_from(claims)
    except TokenValidationError as exc:
        raise BearerRejected(exc.code, exc.detail) from None
    acr, auth_time = authentication(claims)         # RFC 9068 §2.2.1: as the token says the user signed in
    return Session(identity=identity, access_token=token, created_at=now, issued_at=now,
                   expires_at=float(claims["exp"]), id=BEARER_SESSION, acr=acr, auth_time=auth_time)


def invalid_token_header() -> str:
    """``WWW-Authenticate`` for a refused token (RFC 6750 §3): the code only, never the detail."""
    return 'Bearer realm="authproxy", error="invalid_token"'
