"""Everything said to the identity provider: discovery, JWKS, the authorization URL, grants, userinfo.

This is the only module that talks to the provider. It returns plain values (``Metadata``,
``TokenSet``, claim dicts) and raises only ``ProviderError`` (the provider failed a step),
``TokenRejected`` (it answered an OAuth ``error``) and ``TokenValidationError`` (its answer failed a
check), so callers never see aiohttp or joserfc exceptions.

Every token it signs — ID token, JWT access token (Bearer), back-channel logout token — is checked by
one validator (``tokens.TokenValidator``): signature with an algorithm allow-list, then the claims
with our clock and skew, then the rules of that kind of token, each failure with a short code for the
log. This module hands it the provider's keys: the JWKS, cached, reread on an unknown ``kid`` at most
``JWKS_REFETCH_BURST`` times a minute, one read at a time.

Every answer that cannot be parsed — not JSON, too large, nested too deep — is a ``ProviderError``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .config import ProviderConfig
from . import __version__
from .errors import ProviderError, TokenRejected, TokenValidationError
from .metrics import Metrics
from .session import Identity
from .tokens import BACKCHANNEL_EVENT, LOGOUT_TOKEN_MAX_AGE, Expectations, TokenValidator, media_type

__all__ = ["BACKCHANNEL_EVENT", "LOGOUT_TOKEN_MAX_AGE", "Metadata", "Provider", "TokenSet"]

log = logging.getLogger("authproxy.provider")

# A JWKS is re-read after this long even if every kid is known, to pick up revoked keys.
JWKS_TTL = 3600.0
# An unknown kid refetches the JWKS once, then counts as unknown for this long; and at most
# JWKS_REFETCH_BURST refetches happen per JWKS_REFETCH_WINDOW whatever the kids. Forged tokens
# cannot cause a refetch storm, while a real key rotation is picked up by the first login after it.
JWKS_UNKNOWN_KID_TTL = 60.0
JWKS_REFETCH_BURST = 5
JWKS_REFETCH_WINDOW = 60.0
# With no keys at all, a JWKS that could not be read is tried again after this long, not per request.
JWKS_RETRY_AFTER = 1.0
# Longest access-token lifetime believed; a longer expires_in is cut to it (the token is refreshed earlier).
MAX_EXPIRES_IN = 366 * 24 * 3600.0
# Largest provider response we read (discovery, JWKS, tokens, userinfo).
MAX_RESPONSE_BYTES = 1 << 20
USER_AGENT = f"authproxy/{__version__}"
# Key types that can verify an asymmetric signature; symmetric ("oct") keys in a JWKS are ignored.
_KEY_TYPES_BY_ALG_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


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


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A successful token response (RFC 6749 §5.1), with ``expires_in`` turned into a time."""

    access_token: str
    expires_at: float | None
    refresh_token: str | None
    id_token: str | None

    def __repr__(self) -> str:
        return f"TokenSet(expires_at={self.expires_at}, refresh_token={'yes' if self.refresh_token else 'no'})"


class Provider:
    """One configured identity provider, with its metadata and signing keys cached."""

    def __init__(self, config: ProviderConfig, redirect_uri: str, http: aiohttp.ClientSession,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.config = config
        self.redirect_uri = redirect_uri
        self.is_oidc = config.protocol == "oidc"
        self._http = http
        self._clock = clock
        self._metrics = metrics
        self._metadata: Metadata | None = None
        self._keys: KeySet | None = None
        self._keys_fetched_at = float("-inf")
        self._keys_lock = asyncio.Lock()
        self._keys_generation = 0
        self._jwks_retry_at = float("-inf")
        self._refetches: deque[float] = deque()
        self._unknown_kids: dict[str | None, float] = {}
        self._validator = TokenValidator(_expectations(config), self._signing_key, clock)

    # -- metadata -----------------------------------------------------------------------------

    @property
    def metadata(self) -> Metadata | None:
        return self._metadata

    async def load_metadata(self) -> Metadata:
        """Discovery (when an issuer is set), with explicitly configured endpoints taking precedence."""
        c = self.config
        found: Mapping[str, Any] = {}
        if c.needs_discovery and c.issuer:
            url = c.issuer.rstrip("/") + "/.well-known/openid-configuration"
            found = await self._get_json("discovery", url)
            if found.get("issuer") != c.issuer:
                raise ProviderError("discovery", f"the document names issuer {str(found.get('issuer'))[:200]!r}, "
                                    f"not the configured {c.issuer!r} (OpenID Connect Discovery §4.3)")

        def pick(name: str) -> str | None:
            value = getattr(c, name) or found.get(name)
            return value if isinstance(value, str) and value else None

        auth, token = pick("authorization_endpoint"), pick("token_endpoint")
        if not auth or not token:
            raise ProviderError("discovery", "no authorization_endpoint or token_endpoint is known")
        self._metadata = Metadata(issuer=c.issuer, authorization_endpoint=auth, token_endpoint=token,
                                  userinfo_endpoint=pick("userinfo_endpoint"), jwks_uri=pick("jwks_uri"),
                                  end_session_endpoint=pick("end_session_endpoint"),
                                  authorization_response_iss_parameter_supported=found.get(
                                      "authorization_response_iss_parameter_supported") is True)
        return self._metadata

    def _meta(self) -> Metadata:
        if self._metadata is None:
            raise ProviderError("discovery", "the provider's metadata has not been loaded yet", transient=True)
        return self._metadata

    # -- the authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1) -------

    def authorization_url(self, *, state: str, code_challenge: str, nonce: str | None) -> str:
        params = dict(self.config.extra_authorize_params)
        params.update(response_type="code", client_id=self.config.client_id, redirect_uri=self.redirect_uri,
                      scope=" ".join(self.config.scopes), state=state,
                      code_challenge=code_challenge, code_challenge_method="S256")
        if nonce is not None:
            params["nonce"] = nonce
        endpoint = self._meta().authorization_endpoint
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

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
        c = self.config
        headers = {}
        if c.token_endpoint_auth_method == "client_secret_post":
            form = {**form, "client_id": c.client_id, "client_secret": c.client_secret.get()}
        else:
            # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(c.client_id)}:{quote_plus(c.client_secret.get())}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        body = await self._call(step, "POST", self._meta().token_endpoint, data=form, headers=headers,
                                timeout=timeout)
        return self._token_set(step, body)

    def _token_set(self, step: str, body: Mapping[str, Any]) -> TokenSet:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ProviderError(step, "the token response has no access_token")
        if not access.isascii() or not access.isprintable():
            # RFC 6749 Appendix A.12: VSCHAR only. It goes into every upstream request's Authorization
            # header: a CR or LF would split it (both HTTP clients refuse, so it was a 500 each time).
            raise ProviderError(step, "the access_token has characters other than printable ASCII")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ProviderError(step, f"token_type is {str(token_type)[:40]!r}, but only Bearer tokens can be "
                                "forwarded (RFC 6750)")
        expires_at = _expires_at(step, body.get("expires_in"), self._clock())
        refresh, id_token = body.get("refresh_token"), body.get("id_token")
        return TokenSet(access_token=access, expires_at=expires_at,
                        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
                        id_token=id_token if isinstance(id_token, str) and id_token else None)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """Claims from the userinfo endpoint (OIDC Core §5.3), or a plain OAuth 2.0 provider's user API.

        GitHub shows an email in ``/user`` only if the user made it public; otherwise the primary
        verified address comes from ``/user/emails`` (needs the ``user:email`` scope).
        """
        endpoint = self._meta().userinfo_endpoint
        if not endpoint:
            raise ProviderError("userinfo", "the provider has no userinfo_endpoint")
        auth = {"Authorization": f"Bearer {access_token}"}
        claims = await self._get_json("userinfo", endpoint, headers=auth)
        if self.config.type == "github" and not claims.get("email"):
            claims["email"] = await self._github_primary_email(endpoint.rstrip("/") + "/emails", auth)
        return claims

    async def _github_primary_email(self, url: str, auth: Mapping[str, str]) -> str | None:
        """The primary verified address, or None: an email is optional, so a refusal (no
        ``user:email`` scope, a GitHub App without the email permission) must not fail the login."""
        try:
            emails = await self._call("userinfo", "GET", url, headers=auth, as_list=True)
        except ProviderError as exc:
            log.warning("no email from %s: %s", url, exc.detail)
            return None
        primary = [e for e in emails if isinstance(e, dict) and e.get("primary") and e.get("verified")]
        return primary[0]["email"] if primary and isinstance(primary[0].get("email"), str) else None

    def identity_from(self, claims: Mapping[str, Any]) -> Identity:
        user_path = "sub" if self.is_oidc else self.config.claims.user
        return Identity.from_claims(claims, self.config.claims, user_path=user_path)

    # -- token verification: one validator for every kind (proxy/tokens.py) --------------------

    async def verify_id_token(self, id_token: str, *, nonce: str | None,
                              expected_sub: str | None = None) -> dict[str, Any]:
        """OIDC Core §3.1.3.7; ``nonce=None`` is for refreshed tokens (§12.2), which must keep ``sub``."""
        return await self._validator.id_token(id_token, nonce=nonce, expected_sub=expected_sub)

    async def verify_access_token(self, token: str) -> dict[str, Any]:
        """A JWT access token sent as ``Authorization: Bearer`` (RFC 9068 §4)."""
        return await self._validator.access_token(token)

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """A back-channel logout token (Back-Channel Logout 1.0 §2.6)."""
        return await self._validator.logout_token(token)

    async def _signing_key(self, kid: str | None, alg: str) -> Any:
        """The JWKS key for ``kid`` and ``alg``. The JWKS is read when first needed and after
        ``JWKS_TTL``; an unknown kid (a key rotation) rereads it once, rate-limited, so tokens with
        random kids cannot make us hammer the provider. Concurrent lookups share one read."""
        if self._keys is None or self._clock() - self._keys_fetched_at >= JWKS_TTL:
            await self._reread_keys(self._keys_generation, rate_limited=False)
        generation = self._keys_generation          # the keys this lookup saw
        key = self._find_key(kid, alg)
        if (key is None and self._unknown_kids.get(kid, float("-inf")) <= self._clock()
                and await self._reread_keys(generation, rate_limited=True)):
            key = self._find_key(kid, alg)
            if key is None:
                self._remember_unknown(kid)
        if key is None:
            what = f"kid {kid[:40]!r}" if kid is not None else "no kid, and not exactly one key of its type"
            raise TokenValidationError("kid", f"no signing key of the provider fits ({what})")
        return key

    async def _reread_keys(self, seen: int, *, rate_limited: bool) -> bool:
        """Read the JWKS unless someone did since generation ``seen``; False if the rate limit said no."""
        async with self._keys_lock:
            if self._keys_generation != seen:
                return True
            if rate_limited and not self._refetch_allowed():
                return False
            await self._fetch_keys()
            return True

    def _refetch_allowed(self) -> bool:
        now = self._clock()
        while self._refetches and self._refetches[0] <= now - JWKS_REFETCH_WINDOW:
            self._refetches.popleft()
        if len(self._refetches) >= JWKS_REFETCH_BURST:
            return False
        self._refetches.append(now)
        return True

    def _remember_unknown(self, kid: str | None) -> None:
        now = self._clock()
        if len(self._unknown_kids) > 1000:
            self._unknown_kids = {k: t for k, t in self._unknown_kids.items() if t > now}
        self._unknown_kids[kid] = now + JWKS_UNKNOWN_KID_TTL

    def _find_key(self, kid: str | None, alg: str) -> Any:
        """Key choice: by ``kid`` and the key type ``alg`` needs (an ES256 token never meets an RSA key),
        and the key's own ``alg`` if it names one (RFC 7517 §4.4); without a kid only when exactly one
        key fits. Two keys with one kid are no key at all: we never try keys in turn (a forged token
        would cost a verification per key) nor guess which the provider meant."""
        if self._keys is None:
            return None
        kty = _KEY_TYPES_BY_ALG_PREFIX.get(alg[:2])
        candidates = [k for k in self._keys.keys if k.key_type == kty and k.get("use") in (None, "sig")
                      and k.get("alg") in (None, alg)]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        return candidates[0] if len(candidates) == 1 else None

    async def _fetch_keys(self) -> None:
        """One read of the JWKS (under ``_keys_lock``). After a failure with no keys at all, the next
        read waits ``JWKS_RETRY_AFTER``, so requests during an outage do not each try again."""
        uri = self._meta().jwks_uri
        if not uri:
            raise ProviderError("jwks", "the provider publishes no jwks_uri")
        now = self._clock()
        if self._keys is None and now < self._jwks_retry_at:
            raise ProviderError("jwks", "the JWKS could not be read a moment ago", transient=True)
        self._keys_fetched_at = now
        self._jwks_retry_at = now + JWKS_RETRY_AFTER
        doc = await self._get_json("jwks", uri)
        listed = doc.get("keys")
        raw_keys: list[Any] = listed if isinstance(listed, list) else []
        usable = [k for k in raw_keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")]
        try:
            self._keys = KeySet.import_key_set({"keys": usable})
        except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderError("jwks", f"the JWKS holds a key that cannot be read ({type(exc).__name__})") from None
        self._keys_generation += 1

    # -- HTTP -------------------------------------------------------------------------------

    async def _get_json(self, step: str, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call(step, "GET", url, headers=headers)
        return answer

    async def _call(self, step: str, method: str, url: str, *, as_list: bool = False, timeout: float | None = None,
                    **kwargs: Any) -> Any:
        """One request to the provider; the parsed JSON answer, or the error that says what failed.
        ``timeout``: the whole call's bound, if longer than ``provider.timeout`` (which still bounds connecting)."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(kwargs.pop("headers", None) or {})}
        started = time.perf_counter()
        limit = max(timeout or 0.0, self.config.timeout)
        try:
            async with self._http.request(method, url, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=limit, connect=self.config.timeout),
                                          **kwargs) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status, content_type = resp.status, resp.content_type
            if self._metrics is not None:
                self._metrics.provider_seconds.labels(step).observe(time.perf_counter() - started)
        except TimeoutError:
            raise ProviderError(step, f"no answer within {limit:g}s", transient=True) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(step, f"could not connect ({type(exc).__name__})", transient=True) from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise ProviderError(step, "the answer is larger than 1 MiB")
        if status >= 500:
            raise ProviderError(step, f"it answered HTTP {status}", transient=True)
        body = _parse_body(raw, content_type)
        if as_list and status == 200 and isinstance(body, list):
            return body
        if not isinstance(body, dict):
            raise ProviderError(step, f"it answered HTTP {status} with something that is not a JSON object")
        # RFC 6749 §5.2 errors come with 400/401 — and from GitHub with 200.
        if isinstance(body.get("error"), str) and (status >= 400 or "access_token" not in body):
            desc = body.get("error_description")
            raise TokenRejected(step, body["error"][:80], desc if isinstance(desc, str) else None)
        if status != 200:
            raise ProviderError(step, f"it answered HTTP {status}")
        return body


def _expires_at(step: str, expires_in: object, now: float) -> float | None:
    """RFC 6749 §5.1 ``expires_in`` as a time: a non-negative finite number (some providers send it as
    a string), capped at ``MAX_EXPIRES_IN``; ``NaN`` or ``Infinity`` would make the token never due."""
    if expires_in is None:
        return None
    try:
        seconds = float(expires_in) if not isinstance(expires_in, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ProviderError(step, "expires_in is not a number of seconds")
    return now + min(seconds, MAX_EXPIRES_IN)


def _expectations(config: ProviderConfig) -> Expectations:
    return Expectations(issuer=config.issuer, client_id=config.client_id, algorithms=tuple(config.id_token_algorithms),
                        leeway=config.clock_skew, access_audiences=tuple(config.bearer_audiences or [config.client_id]),
                        access_types=frozenset(media_type(t) for t in config.bearer_token_types))


def _parse_body(raw: bytes, content_type: str) -> Any:
    """JSON, or a form-encoded token response (GitHub's answer when asked without ``Accept``); None
    for anything else — nesting too deep for the parser (``RecursionError``) included."""
    if content_type == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
