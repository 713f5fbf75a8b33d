"""Everything said to the identity provider: discovery, JWKS, the authorization URL, grants, userinfo.

This is the only module that talks to the provider. It returns plain values (``Metadata``,
``TokenSet``, claim dicts) and raises only ``ProviderError`` (the provider failed a step),
``TokenRejected`` (it answered an OAuth ``error``) and ``TokenValidationError`` (its answer failed a
check), so callers never see aiohttp or joserfc exceptions.

ID-token verification follows OpenID Connect Core §3.1.3.7: the signature is checked by joserfc
against the provider's JWKS with an explicit algorithm allow-list (never ``none``, never HMAC: the
client secret is not a signing key we accept), then the claims one by one with our own clock and
skew, each failure with a short code for the log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .config import ProviderConfig
from . import __version__
from .errors import ProviderError, TokenRejected, TokenValidationError
from .metrics import Metrics
from .session import Identity

log = logging.getLogger("authproxy.provider")

# A JWKS is re-read after this long even if every kid is known, to pick up revoked keys.
JWKS_TTL = 3600.0
# An unknown kid refetches the JWKS once, then counts as unknown for this long; and at most
# JWKS_REFETCH_BURST refetches happen per JWKS_REFETCH_WINDOW whatever the kids. Forged tokens
# cannot cause a refetch storm, while a real key rotation is picked up by the first login after it.
JWKS_UNKNOWN_KID_TTL = 60.0
JWKS_REFETCH_BURST = 5
JWKS_REFETCH_WINDOW = 60.0
# Largest provider response we read (discovery, JWKS, tokens, userinfo).
MAX_RESPONSE_BYTES = 1 << 20
USER_AGENT = f"authproxy/{__version__}"
# Back-Channel Logout 1.0 §2.4: the event a logout token carries.
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# A logout token older (or newer) than this is refused: it is meant to be delivered at once.
LOGOUT_TOKEN_MAX_AGE = 300.0
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
        self._refetches: deque[float] = deque()
        self._unknown_kids: dict[object, float] = {}

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

    async def refresh(self, refresh_token: str) -> TokenSet:
        return await self._grant("refresh", {"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _grant(self, step: str, form: dict[str, str]) -> TokenSet:
        c = self.config
        headers = {}
        if c.token_endpoint_auth_method == "client_secret_post":
            form = {**form, "client_id": c.client_id, "client_secret": c.client_secret.get()}
        else:
            # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(c.client_id)}:{quote_plus(c.client_secret.get())}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        body = await self._call(step, "POST", self._meta().token_endpoint, data=form, headers=headers)
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
        expires_in = body.get("expires_in")
        expires_at = None
        if expires_in is not None:
            try:
                expires_at = self._clock() + float(expires_in)
            except (TypeError, ValueError):
                raise ProviderError(step, "expires_in is not a number") from None
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

    # -- ID token verification (OIDC Core §3.1.3.7, §12.2 for refresh) ---------------------------

    async def verify_id_token(self, id_token: str, *, nonce: str | None,
                              expected_sub: str | None = None) -> dict[str, Any]:
        """Verify signature and claims; return the claims. ``nonce=None`` is for refreshed tokens."""
        claims = await self.verify_signature(id_token, "ID token")
        self._check_claims(claims, nonce=nonce, expected_sub=expected_sub)
        return claims

    async def verify_signature(self, token: str, what: str) -> dict[str, Any]:
        """A JWT's claims once its signature verifies with a JWKS key and an allowed algorithm."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise TokenValidationError("malformed", f"the {what} is not a compact JWS") from exc
        alg = header.get("alg")
        if alg not in self.config.id_token_algorithms:
            raise TokenValidationError("alg", f"the {what} is signed with {str(alg)[:20]!r}, which is not in "
                                       "provider.id_token_algorithms")
        key = await self._signing_key(header.get("kid"), alg)
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except JoseError as exc:
            raise TokenValidationError("signature", f"the {what}'s signature does not verify ({exc.error})") from exc
        if not isinstance(claims, dict):
            raise TokenValidationError("malformed", f"the {what}'s payload is not a JSON object")
        return dict(claims)

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """A back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6): signature, iss,
        aud, iat, exp if present, the back-channel-logout event, sid or sub, and no nonce."""
        claims = await self.verify_signature(token, "logout token")
        c, now, skew = self.config, self._clock(), self.config.clock_skew
        aud = claims.get("aud")
        if claims.get("iss") != c.issuer:
            raise TokenValidationError("iss", "the logout token was issued by someone else")
        if c.client_id not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
            raise TokenValidationError("aud", "the logout token is not meant for this client")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, (int, float)) or abs(iat - now) > LOGOUT_TOKEN_MAX_AGE + skew:
            raise TokenValidationError("iat", "the logout token has no iat or is too old or from the future")
        if exp is not None and (not isinstance(exp, (int, float)) or exp + skew <= now):
            raise TokenValidationError("exp", "the logout token has expired")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise TokenValidationError("events", "the logout token lacks the back-channel logout event")
        if "nonce" in claims:
            raise TokenValidationError("nonce", "a logout token must not carry a nonce")
        if not isinstance(claims.get("sid"), str) and not isinstance(claims.get("sub"), str):
            raise TokenValidationError("sid", "the logout token names neither a session (sid) nor a user (sub)")
        if not isinstance(claims.get("jti"), str):
            raise TokenValidationError("jti", "the logout token has no jti")
        return claims

    def _check_claims(self, claims: Mapping[str, Any], *, nonce: str | None, expected_sub: str | None) -> None:
        c, now, skew = self.config, self._clock(), self.config.clock_skew
        if claims.get("iss") != c.issuer:
            raise TokenValidationError("iss", "the ID token was issued by someone else")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if c.client_id not in audiences:
            raise TokenValidationError("aud", "the ID token is not meant for this client")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != c.client_id:
            raise TokenValidationError("azp", "the ID token's authorized party is not this client")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, (int, float)) or exp + skew <= now:
            raise TokenValidationError("exp", "the ID token has expired or has no exp")
        if not isinstance(iat, (int, float)) or iat - skew > now:
            raise TokenValidationError("iat", "the ID token has no iat or was issued in the future")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenValidationError("sub", "the ID token has no subject")
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenValidationError("nonce", "the ID token's nonce is missing or not the one sent")
        if expected_sub is not None and claims["sub"] != expected_sub:
            raise TokenValidationError("sub", "the refreshed ID token names another subject")

    async def signing_key(self, kid: object, alg: str) -> Any:
        """The JWKS key to verify a JWT with ``kid``/``alg`` (for bearer tokens); see ``_signing_key``."""
        return await self._signing_key(kid, alg)

    async def _signing_key(self, kid: object, alg: str) -> Any:
        """The JWKS key for ``kid``; an unknown kid refetches the JWKS (rate-limited) once."""
        if self._keys is None or self._clock() - self._keys_fetched_at >= JWKS_TTL:
            await self._fetch_keys()
        key = self._find_key(kid, alg)
        if key is None and self._may_refetch_for(kid):
            await self._fetch_keys()
            key = self._find_key(kid, alg)
            if key is None:
                self._unknown_kids[kid] = self._clock() + JWKS_UNKNOWN_KID_TTL
        if key is None:
            what = f"kid {str(kid)[:40]!r}" if kid is not None else "no kid, and not exactly one key of its type"
            raise TokenValidationError("kid", f"no signing key fits the ID token ({what})")
        return key

    def _may_refetch_for(self, kid: object) -> bool:
        now = self._clock()
        if self._unknown_kids.get(kid, float("-inf")) > now:
            return False
        while self._refetches and self._refetches[0] <= now - JWKS_REFETCH_WINDOW:
            self._refetches.popleft()
        if len(self._refetches) >= JWKS_REFETCH_BURST:
            return False
        self._refetches.append(now)
        if len(self._unknown_kids) > 1000:
            self._unknown_kids = {k: t for k, t in self._unknown_kids.items() if t > now}
        return True

    def _find_key(self, kid: object, alg: str) -> Any:
        """Key choice: by ``kid``; without a kid only when exactly one key of the right type exists
        (trying several keys in turn would make a forged token cost us a verification per key)."""
        if self._keys is None:
            return None
        kty = _KEY_TYPES_BY_ALG_PREFIX.get(alg[:2])
        candidates = [k for k in self._keys.keys if k.key_type == kty and k.get("use") in (None, "sig")]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        return candidates[0] if len(candidates) == 1 else None

    async def _fetch_keys(self) -> None:
        async with self._keys_lock:
            uri = self._meta().jwks_uri
            if not uri:
                raise ProviderError("jwks", "the provider publishes no jwks_uri")
            self._keys_fetched_at = self._clock()
            doc = await self._get_json("jwks", uri)
            raw_keys = doc.get("keys") if isinstance(doc.get("keys"), list) else []
            usable = [k for k in raw_keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")]
            try:
                self._keys = KeySet.import_key_set({"keys": usable})
            except (JoseError, ValueError, TypeError) as exc:
                raise ProviderError("jwks", "the JWKS holds a key that cannot be read") from exc

    # -- HTTP -------------------------------------------------------------------------------

    async def _get_json(self, step: str, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self._call(step, "GET", url, headers=headers)

    async def _call(self, step: str, method: str, url: str, *, as_list: bool = False, **kwargs: Any) -> Any:
        """One request to the provider; the parsed JSON answer, or the error that says what failed."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(kwargs.pop("headers", None) or {})}
        started = time.perf_counter()
        try:
            async with self._http.request(method, url, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                                          **kwargs) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status, content_type = resp.status, resp.content_type
            if self._metrics is not None:
                self._metrics.provider_seconds.labels(step).observe(time.perf_counter() - started)
        except asyncio.TimeoutError:
            raise ProviderError(step, f"no answer within {self.config.timeout:g}s", transient=True) from None
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


def _parse_body(raw: bytes, content_type: str) -> Any:
    """JSON, or a form-encoded token response (GitHub's answer when asked without ``Accept``)."""
    if content_type == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
