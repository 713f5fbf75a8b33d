"""The session value: who the user is (``Identity``) and their tokens (``Session``), nothing about HTTP.

Every module that needs to know who a request is or which tokens it carries imports this one; how a
session is sealed into cookies (``cookies.py``), stored (``store.py``, ``redis_store.py``), loaded and
written per request (``session.py``) or ended (``ending.py``) lives in those modules. Keeping the value
alone here is what lets ``cookies.py`` and ``session.py`` import it without importing each other.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .config import ClaimsConfig
from .errors import CookieError, TokenValidationError

# The idle timeout (``cookie.idle_timeout``) is kept without a write per request: a session's last-seen
# time is rewritten only once it is this fraction of the timeout old, and never less often than every
# TOUCH_MAX seconds — so an idle session ends between ``idle_timeout`` and ``idle_timeout`` plus that
# interval after its last request (``Session.idle_expired``), and an active one costs a cookie (or a
# Redis PEXPIRE) every few minutes at most.
TOUCH_FRACTION = 0.25
TOUCH_MAX = 300.0


def touch_interval(idle_timeout: float) -> float:
    """How stale the recorded last-seen time may grow before a request rewrites it."""
    return min(idle_timeout * TOUCH_FRACTION, TOUCH_MAX)


def idle_window(idle_timeout: float) -> float:
    """How long after its recorded last-seen time a session ends: the timeout plus the touch interval,
    because the recorded time may lag the last request by up to that interval. So a user idle for less
    than ``idle_timeout`` is never signed out."""
    return idle_timeout + touch_interval(idle_timeout)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the user is, as forwarded upstream (``X-Forwarded-User`` etc.)."""

    sub: str
    email: str | None = None
    preferred_username: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()
    # Claims header templates name (``identity.claim_paths``), kept as the text they are sent as.
    claims: tuple[tuple[str, str], ...] = ()

    def claim(self, path: str) -> str | None:
        for kept, value in self.claims:
            if kept == path:
                return value
        return None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], paths: ClaimsConfig | None = None,
                    user_path: str = "sub", kept: tuple[str, ...] = ()) -> Identity:
        """The identity in ID-token or userinfo claims, found at the configured claim paths, and the
        claims at the ``kept`` paths as header text.

        An email with ``email_verified: false`` is not an email: it proves nothing about the user.
        """
        paths = paths or _STANDARD_PATHS
        user = claim_at(claims, user_path)
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)                     # GitHub's numeric user id
        if not isinstance(user, str) or not user:
            raise TokenValidationError("sub", f"the provider did not say who the user is (no {user_path})")
        if not _header_safe(user):
            raise TokenValidationError("sub", "the user id contains control characters")

        def text(path: str) -> str | None:
            value = claim_at(claims, path)
            return value if isinstance(value, str) and value and _header_safe(value) else None

        email = text(paths.email) if claims.get("email_verified") is not False else None
        groups = claim_at(claims, paths.groups)
        if isinstance(groups, str):
            groups = [groups]
        kept_groups = tuple(g for g in groups if isinstance(g, str) and g and _header_safe(g) and "," not in g) \
            if isinstance(groups, list) else ()
        return cls(sub=user, email=email, preferred_username=text(paths.preferred_username), name=text(paths.name),
                   groups=kept_groups, claims=tuple((path, value) for path in kept
                                                    if (value := claim_text(claim_at(claims, path))) is not None))


# Identity values become upstream headers: CR, LF and other controls would split or corrupt them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _header_safe(value: str) -> bool:
    return len(value) <= 1024 and not _CONTROL.search(value)


def claim_text(value: Any) -> str | None:
    """A claim as header text: a string, number or boolean as JSON writes it; a list of those joined with
    "," (items that hold a "," left out, as for groups); None for anything else or an unsafe text."""
    if isinstance(value, list):
        items = [claim_text(item) for item in value if not isinstance(item, (list, dict))]
        value = ",".join(item for item in items if item and "," not in item)
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)) and math.isfinite(value):
        value = str(value)
    return value if isinstance(value, str) and value and _header_safe(value) else None


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``realm_access.roles``); a claim named with dots wins if it exists."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


_STANDARD_PATHS = ClaimsConfig()


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in user's tokens and identity. ``repr`` never shows a token."""

    identity: Identity
    access_token: str = field(repr=False)
    created_at: float
    expires_at: float | None = None       # access token expiry (epoch seconds); None = no expiry given
    issued_at: float | None = None        # when this access token was obtained (for the refresh window)
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    sid: str | None = None                # OIDC session id, for back-channel logout
    id: str = ""                          # random per sign-in: names this session in logs and registries
    last_seen: float | None = None        # last recorded use, at touch_interval granularity (idle timeout only)
    # How the user signed in, from the sign-in's verified ID token only (OIDC Core §2 ``acr``, ``auth_time``),
    # never from a refresh's ID token or userinfo: what a route's step-up rule (``stepup.py``) is judged on.
    # None: not said (or a session stored before these were kept) — no acr, no known age.
    acr: str | None = None
    auth_time: float | None = None

    def __repr__(self) -> str:
        return (f"Session(sub={self.identity.sub!r}, access_token=yes, "
                f"refresh_token={'yes' if self.refresh_token else 'no'}, "
                f"id_token={'yes' if self.id_token else 'no'}, expires_at={self.expires_at})")

    def access_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def last_active(self) -> float:
        """When the session was last recorded in use: ``last_seen``, or its sign-in."""
        return self.last_seen if self.last_seen is not None else self.created_at

    def idle_expired(self, idle_timeout: float | None, now: float) -> bool:
        """Whether the session went unused past ``idle_timeout`` (see ``idle_window``); None: never."""
        return idle_timeout is not None and self.last_active() + idle_window(idle_timeout) <= now

    def seen_due(self, idle_timeout: float | None, now: float) -> bool:
        """Whether a request now should rewrite ``last_seen`` (it is ``touch_interval`` old)."""
        return idle_timeout is not None and now - self.last_active() >= touch_interval(idle_timeout)

    def with_tokens(self, **changes: Any) -> Session:
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["identity"]["groups"] = list(self.identity.groups)
        if not self.identity.claims:
            del data["identity"]["claims"]      # the payload stays as it was for sessions without kept claims
        for name in ("acr", "auth_time"):       # likewise for sessions whose sign-in said neither
            if data[name] is None:
                del data[name]
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session:
        """Parse and type-check a stored session: a payload sealed with our key but of another shape
        (another version, another purpose) is a ``CookieError``, never a crash on every request."""
        try:
            data = json.loads(raw)
            ident = data.pop("identity")
            ident["groups"] = tuple(ident.get("groups") or ())
            ident["claims"] = tuple(tuple(pair) for pair in ident.get("claims") or ())
            session = cls(identity=Identity(**ident), **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CookieError("session payload is not in the expected shape") from exc
        if not session._well_typed():
            raise CookieError("session payload has fields of the wrong type")
        return session

    def _well_typed(self) -> bool:
        def text(value: object, optional: bool = True) -> bool:
            return isinstance(value, str) if not optional else value is None or isinstance(value, str)

        def number(value: object, optional: bool = True) -> bool:
            if value is None:
                return optional
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        ident = self.identity
        return (text(ident.sub, False) and bool(ident.sub) and text(ident.email) and text(ident.preferred_username)
                and text(ident.name) and all(isinstance(g, str) for g in ident.groups)
                and all(len(c) == 2 and text(c[0], False) and text(c[1], False) for c in ident.claims)
                and text(self.access_token, False) and text(self.id, False) and text(self.refresh_token)
                and text(self.id_token) and text(self.sid) and number(self.created_at, False)
                and number(self.expires_at) and number(self.issued_at) and number(self.last_seen)
                and text(self.acr) and number(self.auth_time))
