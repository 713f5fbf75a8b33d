"""One validator for every JWT the provider signs: ID tokens, JWT access tokens and logout tokens.

Three steps, kept apart as joserfc keeps them (its ``jws`` decoding, then its claims registry):

1. **Decode and verify** (RFC 7515, RFC 7519 §7.2): a compact JWS of three base64url segments and no
   more than ``MAX_TOKEN_LENGTH`` characters; a header whose registered members have their registered
   types, with no ``crit`` (we implement no extension, §4.1.11) and no key of its own (``jku``,
   ``x5u``, ``jwk``, ``x5c``: a token never chooses the key it is checked with); ``alg`` in the
   configured allow-list (never ``none``, never HMAC, so a public key can never double as an HMAC
   secret); the key from the provider's JWKS by ``kid`` and key type; the signature checked by
   joserfc. Any malformed input is a ``TokenValidationError`` with code ``malformed`` — never a
   ``RecursionError``, ``TypeError`` or the like, which would be a 500 (fuzzed in tests/fuzz).
2. **Registered claims** with the injected clock and ``provider.clock_skew`` as leeway: ``iss`` is the
   issuer, exactly (a trailing ``/`` is another issuer); ``aud`` names one of the expected audiences;
   ``exp``, ``nbf`` and ``iat`` are finite numbers (not strings, booleans, ``NaN`` or past year 9999),
   ``exp`` in the future, ``nbf`` and ``iat`` not.
3. **The kind's own rules**, so that one kind of token is never taken for another:

   - ID token (OpenID Connect Core §3.1.3.7): ``aud`` holds the client id and, with several audiences
     or an ``azp``, ``azp`` is the client id; ``iat`` and ``sub`` are present; ``nonce`` is the one
     sent (compared in constant time); no ``events`` and no access- or logout-token ``typ``.
   - Access token (RFC 9068 §4): ``typ`` is ``at+jwt`` (``application/at+jwt``) or one of
     ``provider.bearer_token_types``; ``aud`` holds one of ``provider.bearer_audiences``; ``sub`` is
     present. Whatever that setting says, a token with ``nonce`` (an ID token: they travel in sign-out
     URLs as ``id_token_hint``, in browser history and provider logs) or ``events`` (a logout token),
     or typed as a logout token, is refused.
   - Logout token (Back-Channel Logout 1.0 §2.6): ``aud`` holds the client id; ``iat`` within
     ``LOGOUT_TOKEN_MAX_AGE``; the back-channel-logout event; ``sid`` or ``sub``; a ``jti``; no
     ``nonce``; no access-token ``typ``.

Only ``provider`` builds a validator (it owns the JWKS and hands in its key lookup), so callers ask
the provider, never this module, to check a token.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from .errors import TokenValidationError

# Longest token looked at: joserfc's own segment limits (512 + 128,000 + 1,024) with the dots.
MAX_TOKEN_LENGTH = 130_000
# A compact JWS (RFC 7515 §7.1): three base64url segments without padding (an empty signature is
# "alg": "none", refused by the allow-list).
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Latest NumericDate accepted (9999-12-31): later values are no date, and huge integers would not fit a float.
MAX_NUMERIC_DATE = 253_402_300_799
# Back-Channel Logout 1.0 §2.4: the event a logout token carries.
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# A logout token older (or newer) than this is refused: it is meant to be delivered at once.
LOGOUT_TOKEN_MAX_AGE = 300.0
# ``typ`` values (RFC 7515 §4.1.9, compared without "application/" and case) that name each kind.
ACCESS_TOKEN_TYPE = "at+jwt"          # RFC 9068 §2.1
LOGOUT_TOKEN_TYPE = "logout+jwt"      # Back-Channel Logout 1.0 §2.4
# Header members that would bring their own key, or extensions we would have to understand: refused.
_REFUSED_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64")

KeyLookup = Callable[[str | None, str], Awaitable[Any]]


class Kind(Enum):
    """What a token is meant to be; its value names it in error messages."""

    ID_TOKEN = "ID token"
    ACCESS_TOKEN = "access token"
    LOGOUT_TOKEN = "logout token"


@dataclass(frozen=True, slots=True)
class Expectations:
    """What the provider's tokens must say; built once from ``ProviderConfig``."""

    issuer: str | None
    client_id: str
    algorithms: tuple[str, ...]
    leeway: float
    access_audiences: tuple[str, ...]
    access_types: frozenset[str]          # normalised with ``media_type``; "" = no typ header


def media_type(typ: str) -> str:
    """RFC 7515 §4.1.9: "application/" may be left out, and media types compare case-insensitively."""
    typ = typ.lower()
    return typ[len("application/"):] if typ.startswith("application/") else typ


class TokenValidator:
    """Checks tokens of every kind with one decoder, one clock and one key lookup."""

    def __init__(self, expect: Expectations, keys: KeyLookup, clock: Callable[[], float]) -> None:
        self._expect = expect
        self._keys = keys
        self._clock = clock
        refused = {name: HeaderParameter(f"refused: {name}", "none") for name in _REFUSED_HEADERS}
        self._registry = JWSRegistry(header_registry=refused, algorithms=list(expect.algorithms),
                                     strict_check_header=False)

    async def id_token(self, token: str, *, nonce: str | None, expected_sub: str | None = None) -> dict[str, Any]:
        """OIDC Core §3.1.3.7; ``nonce=None`` for a refreshed ID token (§12.2), which must keep ``sub``."""
        kind, e = Kind.ID_TOKEN, self._expect
        header, claims = await self._verified(token, kind)
        self._registered_claims(claims, kind, audiences=(e.client_id,), iat_required=True)
        _refuse_types(header, kind, (ACCESS_TOKEN_TYPE, LOGOUT_TOKEN_TYPE))
        if "events" in claims:
            raise TokenValidationError("events", "an ID token carries no events (this is a logout token)")
        azp = claims.get("azp")
        if (len(_audiences(claims, kind)) > 1 or azp is not None) and azp != e.client_id:
            raise TokenValidationError("azp", "the ID token's authorized party is not this client")
        sub = _subject(claims, kind)
        if nonce is not None and not _same(claims.get("nonce"), nonce):
            raise TokenValidationError("nonce", "the ID token's nonce is missing or not the one sent")
        if expected_sub is not None and sub != expected_sub:
            raise TokenValidationError("sub", "the refreshed ID token names another subject")
        return claims

    async def access_token(self, token: str) -> dict[str, Any]:
        """RFC 9068 §4, and never an ID token or a logout token whatever ``bearer_token_types`` says."""
        kind, e = Kind.ACCESS_TOKEN, self._expect
        header, claims = await self._verified(token, kind)
        typ = header.get("typ")
        typ = media_type(typ) if isinstance(typ, str) else ""
        if typ == LOGOUT_TOKEN_TYPE or typ not in e.access_types:
            raise TokenValidationError("typ", f"typ {typ[:40]!r} is not a JWT access token's (RFC 9068 §2.1); "
                                       "see provider.bearer_token_types")
        for claim in ("nonce", "events"):
            if claim in claims:
                raise TokenValidationError(claim, f"a token with {claim} is an ID or logout token, not an access token")
        self._registered_claims(claims, kind, audiences=e.access_audiences, iat_required=False)
        _subject(claims, kind)
        return claims

    async def logout_token(self, token: str) -> dict[str, Any]:
        """Back-Channel Logout 1.0 §2.6."""
        kind = Kind.LOGOUT_TOKEN
        header, claims = await self._verified(token, kind)
        self._registered_claims(claims, kind, audiences=(self._expect.client_id,), iat_required=True)
        _refuse_types(header, kind, (ACCESS_TOKEN_TYPE,))
        if abs(claims["iat"] - self._clock()) > LOGOUT_TOKEN_MAX_AGE + self._expect.leeway:
            raise TokenValidationError("iat", "the logout token is too old or from the future")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise TokenValidationError("events", "the logout token lacks the back-channel logout event")
        if "nonce" in claims:
            raise TokenValidationError("nonce", "a logout token must not carry a nonce")
        if not _text(claims.get("sid")) and not _text(claims.get("sub")):
            raise TokenValidationError("sid", "the logout token names neither a session (sid) nor a user (sub)")
        if not _text(claims.get("jti")):
            raise TokenValidationError("jti", "the logout token has no jti")
        return claims

    # -- step 1: decode and verify -----------------------------------------------------------------

    async def _verified(self, token: str, kind: Kind) -> tuple[dict[str, Any], dict[str, Any]]:
        """The header and claims of a compact JWS signed by a provider key with an allowed algorithm."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _COMPACT.fullmatch(token):
            raise TokenValidationError("malformed", f"the {kind.value} is not a compact JWS")
        header = self._header(token, kind)
        alg = header["alg"]
        if alg not in self._expect.algorithms:
            raise TokenValidationError("alg", f"the {kind.value} is signed with {alg[:20]!r}, which is not in "
                                       "provider.id_token_algorithms")
        key = await self._keys(header.get("kid"), alg)
        try:
            with warnings.catch_warnings():     # joserfc warns that RFC 9864 renamed "EdDSA"; allowed on purpose
                warnings.simplefilter("ignore", SecurityWarning)
                payload = jws.deserialize_compact(token, key, algorithms=[alg], registry=self._registry).payload
        except (JoseError, ValueError, TypeError) as exc:
            raise TokenValidationError("signature", f"the {kind.value}'s signature does not verify "
                                       f"({type(exc).__name__})") from None
        claims = _json_object(payload or b"")
        if claims is None:
            raise TokenValidationError("malformed", f"the {kind.value}'s payload is not a JSON object")
        return header, claims

    def _header(self, token: str, kind: Kind) -> dict[str, Any]:
        """The protected header, every registered member of its registered type (RFC 7515 §4.1)."""
        try:
            header = jws.extract_compact(token.encode("ascii"), registry=self._registry).headers()
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            self._registry.check_header(header)
        except (JoseError, ValueError, TypeError, RecursionError, AttributeError) as exc:
            raise TokenValidationError("malformed", f"the {kind.value}'s header is not acceptable "
                                       f"({type(exc).__name__})") from None
        return header

    # -- step 2: registered claims (RFC 7519 §4.1) -----------------------------------------------------

    def _registered_claims(self, claims: dict[str, Any], kind: Kind, *, audiences: tuple[str, ...],
                           iat_required: bool) -> None:
        e, now = self._expect, self._clock()
        if e.issuer is None or claims.get("iss") != e.issuer:
            raise TokenValidationError("iss", f"the {kind.value} was issued by someone else")
        if not set(_audiences(claims, kind)) & set(audiences):
            raise TokenValidationError("aud", f"the {kind.value} is not meant for this client")
        exp = _numeric_date(claims, "exp", kind, required=kind is not Kind.LOGOUT_TOKEN)
        if exp is not None and exp + e.leeway <= now:
            raise TokenValidationError("exp", f"the {kind.value} has expired")
        nbf = _numeric_date(claims, "nbf", kind, required=False)
        if nbf is not None and nbf - e.leeway > now:
            raise TokenValidationError("nbf", f"the {kind.value} is not valid yet")
        iat = _numeric_date(claims, "iat", kind, required=iat_required)
        if iat is not None and iat - e.leeway > now:
            raise TokenValidationError("iat", f"the {kind.value} was issued in the future")


# -- helpers ------------------------------------------------------------------------------------------


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else — nesting too deep to parse included."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _audiences(claims: Mapping[str, Any], kind: Kind) -> list[str]:
    """RFC 7519 §4.1.3: one string or a list of strings; anything else is no audience at all."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return aud
    raise TokenValidationError("aud", f"the {kind.value}'s aud is missing or not a string or list of strings")


def _numeric_date(claims: Mapping[str, Any], name: str, kind: Kind, *, required: bool) -> float | None:
    """RFC 7519 §2 NumericDate: a JSON number (not a boolean), finite, from 1970 to the year 9999."""
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= MAX_NUMERIC_DATE or (isinstance(value, float) and not math.isfinite(value)):
        raise TokenValidationError(name, f"the {kind.value}'s {name} is missing or not a NumericDate")
    return float(value)


def _subject(claims: Mapping[str, Any], kind: Kind) -> str:
    sub = claims.get("sub")
    if not _text(sub):
        raise TokenValidationError("sub", f"the {kind.value} has no subject")
    return str(sub)


def _refuse_types(header: Mapping[str, Any], kind: Kind, refused: tuple[str, ...]) -> None:
    typ = header.get("typ")
    if isinstance(typ, str) and media_type(typ) in refused:
        raise TokenValidationError("typ", f"the {kind.value} is typed {typ[:40]!r}, another kind of token")


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _same(value: object, expected: str) -> bool:
    """Constant-time equality for a secret an attacker may probe byte by byte (the nonce)."""
    return isinstance(value, str) and hmac.compare_digest(value.encode(), expected.encode())
