"""Everything said to the identity provider: discovery, JWKS, the authorization URL, grants, userinfo.

This package is the only code that talks to the provider. ``Provider`` is what the rest of authproxy
uses; it returns plain values (``Metadata``, ``TokenSet``, claim dicts) and raises only
``ProviderError`` (the provider failed a step), ``TokenRejected`` (it answered an OAuth ``error``) and
``TokenValidationError`` (its answer failed a check), so callers never see aiohttp or joserfc
exceptions. Its parts, one concern each:

- ``client.py``    one HTTP request to the provider and its answer parsed: timeout, size limit, the
                   error mapping — every answer that cannot be parsed is a ``ProviderError``;
- ``metadata.py``  discovery, with configured endpoints taking precedence;
- ``keys.py``      the JWKS cache and the choice of a key for a token, with its refetch limits;
- ``clientauth.py`` how the client authenticates at the token endpoint: a secret, a signed assertion
                   (``private_key_jwt``, ``client_secret_jwt``) or none (a public client with PKCE);
- ``grants.py``    the token endpoint's answer as a ``TokenSet``;
- ``userinfo.py``  the userinfo endpoint, and GitHub's second call for an email;
- ``graph.py``     Entra ID groups from Microsoft Graph when they overflow the ID token;
- ``google.py``    the Workspace domain (``hd``) of a Google ID token;
- ``zitadel.py``   ZITADEL's role claim (an object keyed by role) read as groups;
- ``online.py``    ``--check-config --online``: the configuration tried against the provider.

Every token it signs — ID token, JWT access token (Bearer), back-channel logout token — is checked by
one validator (``tokens.TokenValidator``): signature with an algorithm allow-list, then the claims
with our clock and skew, then the rules of that kind of token, each failure with a short code for the
log. ``Provider`` hands it the provider's keys (``keys.SigningKeys``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from ..config import ProviderConfig
from ..presets import MICROSOFT_GRAPH
from ..errors import ProviderError
from ..metrics import Metrics
from ..session import Identity
from ..tracing import span
from ..tokens import BACKCHANNEL_EVENT, LOGOUT_TOKEN_MAX_AGE, Expectations, TokenValidator, media_type
from . import graph, zitadel
from .client import MAX_RESPONSE_BYTES, USER_AGENT, ProviderClient
from .clientauth import ClientAuthentication, check_method
from .grants import MAX_EXPIRES_IN, TokenSet, token_set
from .keys import (
    JWKS_REFETCH_BURST,
    JWKS_REFETCH_WINDOW,
    JWKS_RETRY_AFTER,
    JWKS_TTL,
    JWKS_UNKNOWN_KID_TTL,
    SigningKeys,
)
from .google import check_hosted_domain
from .metadata import Metadata, discover
from .userinfo import fetch_userinfo

__all__ = ["BACKCHANNEL_EVENT", "JWKS_REFETCH_BURST", "JWKS_REFETCH_WINDOW", "JWKS_RETRY_AFTER", "JWKS_TTL",
           "JWKS_UNKNOWN_KID_TTL", "LOGOUT_TOKEN_MAX_AGE", "MAX_EXPIRES_IN", "MAX_RESPONSE_BYTES", "USER_AGENT",
           "Metadata", "Provider", "TokenSet"]


# Longest request_uri taken from a PAR answer: it goes into the browser's URL.
MAX_REQUEST_URI = 2048


class Provider:
    """One configured identity provider, with its metadata and signing keys cached."""

    def __init__(self, config: ProviderConfig, redirect_uri: str, http: aiohttp.ClientSession,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
                 kept_claims: tuple[str, ...] = ()) -> None:
        self.config = config
        self.kept_claims = kept_claims      # the claim paths header templates name (identity.claim_paths)
        self.redirect_uri = redirect_uri
        self.is_oidc = config.protocol == "oidc"
        self._clock = clock
        self._client = ProviderClient(http, config.timeout, metrics)
        self._metadata: Metadata | None = None
        self._auth: ClientAuthentication | None = None
        self.jwks = SigningKeys(self._client, lambda: self._meta().jwks_uri, clock)
        self._validator = TokenValidator(_expectations(config), self.jwks.key_for, clock)

    # -- metadata -----------------------------------------------------------------------------

    @property
    def metadata(self) -> Metadata | None:
        return self._metadata

    async def load_metadata(self) -> Metadata:
        """Discovery (when an issuer is set), with explicitly configured endpoints taking precedence."""
        found = await discover(self.config, self._client)
        check_method(self.config, found)
        if self.config.pushed_authorization_requests and not found.pushed_authorization_request_endpoint:
            raise ProviderError("discovery", "pushed_authorization_requests is on, but the provider advertises no "
                                "pushed_authorization_request_endpoint; set provider."
                                "pushed_authorization_request_endpoint, or turn pushed_authorization_requests off")
        self._auth = ClientAuthentication(self.config, found, self._clock)
        self._metadata = found
        return found

    def _meta(self) -> Metadata:
        if self._metadata is None:
            raise ProviderError("discovery", "the provider's metadata has not been loaded yet", transient=True)
        return self._metadata

    # -- the authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1) -------

    async def authorization_url(self, *, state: str, code_challenge: str, nonce: str | None,
                                extra: Mapping[str, str] | None = None) -> str:
        """Where to send the browser to sign in. ``extra``: per-request parameters (``login_hint``…),
        already checked against ``authorize_parameters``; they win over ``extra_authorize_params``.

        With pushed authorization requests (RFC 9126) the parameters go to the provider over the back
        channel, authenticated as the client, and the browser carries only ``client_id`` and the
        ``request_uri`` the provider answered: nothing in the URL can be altered or read on the way."""
        params = {**self.config.extra_authorize_params, **(extra or {})}
        params.update(response_type="code", client_id=self.config.client_id, redirect_uri=self.redirect_uri,
                      scope=" ".join(self.config.scopes), state=state,
                      code_challenge=code_challenge, code_challenge_method="S256")
        if nonce is not None:
            params["nonce"] = nonce
        if self.config.response_mode != "query":
            params["response_mode"] = self.config.response_mode       # OAuth 2.0 Form Post Response Mode §2
        meta = self._meta()
        if self.config.pushed_authorization_requests or meta.require_pushed_authorization_requests:
            params = {"client_id": self.config.client_id, "request_uri": await self._push(meta, params)}
        endpoint = meta.authorization_endpoint
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def _push(self, meta: Metadata, params: dict[str, str]) -> str:
        """RFC 9126 §2: the request's parameters to the PAR endpoint; the ``request_uri`` that stands for them."""
        step = "pushed authorization request"
        if not meta.pushed_authorization_request_endpoint:
            raise ProviderError(step, "the provider has no pushed_authorization_request_endpoint")
        form, headers = self._authentication().apply(params)
        body = await self._client.call(step, "POST", meta.pushed_authorization_request_endpoint, data=form,
                                       headers=headers, created=True)
        request_uri = body.get("request_uri")
        if not isinstance(request_uri, str) or not request_uri or len(request_uri) > MAX_REQUEST_URI:
            raise ProviderError(step, "the answer has no usable request_uri")
        return request_uri

    def end_session_url(self, *, id_token_hint: str | None, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2), if the provider has it."""
        endpoint = self._metadata.end_session_endpoint if self._metadata else None
        if not endpoint:
            return None
        params = {"client_id": self.config.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    # -- grants (RFC 6749 §4.1.3 and §6) ------------------------------------------------------

    async def exchange_code(self, code: str, code_verifier: str) -> TokenSet:
        return await self._grant("token exchange", {"grant_type": "authorization_code", "code": code,
                                                    "redirect_uri": self.redirect_uri,
                                                    "code_verifier": code_verifier})

    async def refresh(self, refresh_token: str, *, timeout: float | None = None) -> TokenSet:
        """``timeout``: how long to await the answer once connected (default ``provider.timeout``): the
        refresher awaits a sent grant much longer, since the provider rotates the token even for a
        caller that has gone (``refresh.GRANT_CAP``). Connecting is still bounded by ``provider.timeout``."""
        return await self._grant("refresh", {"grant_type": "refresh_token", "refresh_token": refresh_token},
                                 timeout)

    async def _grant(self, step: str, form: dict[str, str], timeout: float | None = None) -> TokenSet:
        form, headers = self._authentication().apply(form)
        with span(f"provider {step}", client=True, **{"authproxy.grant": form["grant_type"]}) as current:
            try:
                body = await self._client.call(step, "POST", self._meta().token_endpoint, data=form,
                                               headers=headers, timeout=timeout)
                tokens = token_set(step, body, self._clock())
            except ProviderError as exc:
                current.set_attribute("authproxy.outcome", "unavailable" if exc.transient else "refused")
                raise
            current.set_attribute("authproxy.outcome", "ok")
            return tokens

    def _authentication(self) -> ClientAuthentication:
        if self._auth is None:              # metadata set without load_metadata (tests)
            self._auth = ClientAuthentication(self.config, self._meta(), self._clock)
        return self._auth

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """Claims from the userinfo endpoint (OIDC Core §5.3), or a plain OAuth 2.0 provider's user API."""
        endpoint = self._meta().userinfo_endpoint
        if not endpoint:
            raise ProviderError("userinfo", "the provider has no userinfo_endpoint")
        return await fetch_userinfo(self._client, endpoint, self.config.type, access_token,
                                    github_groups=self.config.github_groups)

    def identity_from(self, claims: Mapping[str, Any]) -> Identity:
        user_path = "sub" if self.is_oidc else self.config.claims.user
        if zitadel.is_roles_claim(self.config.claims.groups):
            claims = zitadel.roles_as_groups(claims, self.config.claims.groups)
        return Identity.from_claims(claims, self.config.claims, user_path=user_path, kept=self.kept_claims)

    # -- Entra ID groups overage (graph.py) ----------------------------------------------------

    def groups_overflowed(self, claims: Mapping[str, Any]) -> bool:
        """Whether these Entra ID claims say the user's groups did not fit, where groups are read from
        the ``groups`` claim (with another claim configured as groups, the overflow does not matter)."""
        return self.config.type == "microsoft" and self.config.claims.groups == "groups" \
            and graph.groups_overflowed(claims)

    async def overflowed_groups(self, access_token: str) -> list[str]:
        """The user's group ids from Microsoft Graph; ``ProviderError`` when they cannot all be read."""
        with span("provider graph groups", client=True):
            return await graph.member_groups(self._client, self.config.microsoft_graph_url or MICROSOFT_GRAPH,
                                             access_token)

    # -- token verification: one validator for every kind (proxy/tokens.py) --------------------

    async def verify_id_token(self, id_token: str, *, nonce: str | None,
                              expected_sub: str | None = None) -> dict[str, Any]:
        """OIDC Core §3.1.3.7; ``nonce=None`` is for refreshed tokens (§12.2), which must keep ``sub``.
        With ``google_hosted_domains``, an account of another domain is refused here (``AccountRefused``):
        the verified ID token is the one place its ``hd`` can be trusted (google.py)."""
        claims = await self._validator.id_token(id_token, nonce=nonce, expected_sub=expected_sub)
        check_hosted_domain(claims, self.config.google_hosted_domains)
        return claims

    async def verify_access_token(self, token: str) -> dict[str, Any]:
        """A JWT access token sent as ``Authorization: Bearer`` (RFC 9068 §4)."""
        return await self._validator.access_token(token)

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """A back-channel logout token (Back-Channel Logout 1.0 §2.6)."""
        return await self._validator.logout_token(token)


def _expectations(config: ProviderConfig) -> Expectations:
    return Expectations(issuer=config.issuer, client_id=config.client_id, algorithms=tuple(config.id_token_algorithms),
                        leeway=config.clock_skew, access_audiences=tuple(config.bearer_audiences or [config.client_id]),
                        access_types=frozenset(media_type(t) for t in config.bearer_token_types))
