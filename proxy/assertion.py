"""Signed identity assertions: a short-lived JWT per upstream that says who the user is.

Identity headers (``X-Forwarded-User``…) are only as good as the network between the proxy and the app:
anything that reaches the app around the proxy can send them. An assertion is a JWT signed by the proxy
(ES256), with ``aud`` naming one upstream, so an app can check with any JWT library — against the keys
the proxy publishes at ``/oauth2/jwks`` — that the proxy sent it, recently, for this app and no other.

- **Keys** come from the cookie secrets (``crypto.assertion_signing_key``): the first signs, every one is
  published, so secret rotation is key rotation, and workers and replicas agree without a key file.
  ``kid`` is the key's RFC 7638 thumbprint.
- **Claims**: ``iss`` (the proxy's public URL), ``aud``, ``sub``, ``iat``, ``nbf``, ``exp`` (``lifetime``
  later), and those of ``email``, ``preferred_username``, ``name`` and ``groups`` the user has. The
  header's ``typ`` is ``authproxy-identity+jwt`` so that no other JWT of the same issuer (were there
  ever one) passes for an assertion (RFC 8725 §3.11).
- **Cost**: signing is ~0.1 ms of CPU; an assertion is reused for the same identity and audience until
  half its lifetime has passed, so a busy session signs once per half-lifetime, not per request.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from .crypto import assertion_signing_key
from .model import Identity, Session

ALGORITHM = "ES256"
TYP = "authproxy-identity+jwt"
# Assertions kept for reuse (per session and audience); the oldest go first.
CACHE_MAX = 10_000
# How long a client may keep /oauth2/jwks: short, so a rotated secret's key is seen soon; libraries
# (PyJWKClient, joserfc's KeySet users) fetch again anyway when a token names a kid they do not have.
JWKS_MAX_AGE = 300


class AssertionSigner:
    """Signs assertions with the first key; publishes all of them."""

    def __init__(self, secrets: Sequence[bytes], issuer: str, *, clock: Callable[[], float] = time.time) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed to sign assertions")
        self._keys = [ECKey.import_key(assertion_signing_key(secret)) for secret in secrets]
        self._kids = [key.thumbprint() for key in self._keys]
        self._issuer = issuer
        self.jwks_body = json.dumps(self.jwks()).encode()      # what /oauth2/jwks answers, made once
        self._clock = clock
        self._cache: OrderedDict[tuple[Identity, str, float], tuple[float, str]] = OrderedDict()

    def jwks(self) -> dict[str, Any]:
        """The public keys, as ``/oauth2/jwks`` serves them (RFC 7517 §5)."""
        return {"keys": [{**key.as_dict(private=False), "kid": kid, "use": "sig", "alg": ALGORITHM}
                         for key, kid in zip(self._keys, self._kids, strict=True)]}

    def assertion(self, session: Session, audience: str, lifetime: float) -> str:
        """The assertion for ``session`` and ``audience``: a cached one with more than half its life left,
        else a new one."""
        now = self._clock()
        # Keyed by the identity itself (a frozen value), which is all the claims come from: a refreshed
        # identity (new groups) is a new entry, and a Bearer API client — a new Session per request —
        # reuses its assertion instead of paying a signature per request.
        key = (session.identity, audience, lifetime)
        try:
            cached = self._cache.get(key)
        except TypeError:                    # an Identity built with a list somewhere: sign, do not keep
            return self._sign(session, audience, now, lifetime)
        if cached is not None and cached[0] - now > lifetime / 2:
            return cached[1]
        token = self._sign(session, audience, now, lifetime)
        self._cache[key] = (now + lifetime, token)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return token

    def _sign(self, session: Session, audience: str, now: float, lifetime: float) -> str:
        ident = session.identity
        issued = int(now)
        claims: dict[str, Any] = {"iss": self._issuer, "aud": audience, "sub": ident.sub,
                                  "iat": issued, "nbf": issued, "exp": int(now + lifetime)}
        if ident.email:
            claims["email"] = ident.email
        if ident.preferred_username:
            claims["preferred_username"] = ident.preferred_username
        if ident.name:
            claims["name"] = ident.name
        if ident.groups:
            claims["groups"] = list(ident.groups)
        header = {"alg": ALGORITHM, "typ": TYP, "kid": self._kids[0]}
        return jwt.encode(header, claims, self._keys[0], algorithms=[ALGORITHM])


ASSERTIONS = web.AppKey("authproxy_assertions", AssertionSigner)


async def handle_jwks(request: web.Request) -> web.Response:
    """``/oauth2/jwks``: the public keys assertions are signed with (RFC 7517), for anyone to fetch."""
    return web.Response(body=request.app[ASSERTIONS].jwks_body, content_type="application/jwk-set+json",
                        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})
