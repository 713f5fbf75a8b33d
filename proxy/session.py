"""The session: what a signed-in browser carries, and how a request reads and writes it.

``Session`` is the value: the user's identity and tokens, with a ``repr`` that shows no token. How it
is sealed into cookies and read back — chunking, the decoded-session cache, ``Set-Cookie`` values — is
``cookies.py``'s; this module is the request path around it, with the keys under which the codec,
the store and each request's state are found.

Loading is lazy (``get_session``): requests that never ask — ``/ping``, static skips — pay nothing.
Writing happens once, in ``write_session_cookie`` on ``app.on_response_prepare``, and only when the
handler changed the session: that hook fires for raised redirects and for streamed upstream
responses alike, where a middleware running after the handler would be too late.

A cookie that does not open, or whose session has ended, is an anonymous user: a warning in the log,
the cookie cleared, never a 500 (aiohttp-session does the same).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from aiohttp import web

from .config import ClaimsConfig
from .cookies import CookieCodec, own_cookies
from .errors import AuthProxyError, CookieError, TokenValidationError

log = logging.getLogger("authproxy.session")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the user is, as forwarded upstream (``X-Forwarded-User`` etc.)."""

    sub: str
    email: str | None = None
    preferred_username: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], paths: ClaimsConfig | None = None,
                    user_path: str = "sub") -> Identity:
        """The identity in ID-token or userinfo claims, found at the configured claim paths.

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
        kept = tuple(g for g in groups if isinstance(g, str) and g and _header_safe(g) and "," not in g) \
            if isinstance(groups, list) else ()
        return cls(sub=user, email=email, preferred_username=text(paths.preferred_username), name=text(paths.name),
                   groups=kept)


# Identity values become upstream headers: CR, LF and other controls would split or corrupt them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _header_safe(value: str) -> bool:
    return len(value) <= 1024 and not _CONTROL.search(value)


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

    def __repr__(self) -> str:
        return (f"Session(sub={self.identity.sub!r}, access_token=yes, "
                f"refresh_token={'yes' if self.refresh_token else 'no'}, "
                f"id_token={'yes' if self.id_token else 'no'}, expires_at={self.expires_at})")

    def access_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def with_tokens(self, **changes: Any) -> Session:
        return replace(self, **changes)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["identity"]["groups"] = list(self.identity.groups)
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Session:
        """Parse and type-check a stored session: a payload sealed with our key but of another shape
        (another version, another purpose) is a ``CookieError``, never a crash on every request."""
        try:
            data = json.loads(raw)
            ident = data.pop("identity")
            ident["groups"] = tuple(ident.get("groups") or ())
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
                and text(self.access_token, False) and text(self.id, False) and text(self.refresh_token)
                and text(self.id_token) and text(self.sid) and number(self.created_at, False)
                and number(self.expires_at) and number(self.issued_at))


class Store(Protocol):
    """What the request path needs of a session store (``store.py`` has the full protocol)."""

    def owned_names(self, cookies: Mapping[str, str]) -> list[str]: ...

    async def load(self, cookies: Mapping[str, str]) -> Session | None: ...

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]: ...

    async def delete(self, cookies: Mapping[str, str]) -> None: ...


class SessionState:
    """The per-request view of the session: loaded once (``load_session``), written only if changed.

    ``deferred`` holds other ``Set-Cookie`` values (such as clearing a spent login cookie) that must
    reach the browser whatever response ends the request, error pages included.
    """

    __slots__ = ("_cookies", "_session", "changed", "present", "deferred", "saved")

    def __init__(self, present: list[str], cookies: Mapping[str, str]) -> None:
        self._cookies = cookies
        self._session: Session | None = None
        self.changed = False
        self.present = present
        self.deferred: list[str] = []
        self.saved: list[tuple[str, str]] | None = None

    async def load(self, store: Store) -> None:
        try:
            self._session = await store.load(self._cookies)
        except CookieError as exc:
            log.warning("session cookie ignored: %s", exc)
            self._session = None
            self.changed = bool(self.present)     # clear the bad cookie

    def get(self) -> Session | None:
        return self._session

    def peek(self) -> Session | None:
        """The session, for the access log."""
        return self._session

    def set(self, session: Session | None) -> None:
        self._session = session
        self.changed = True
        self.saved = None


SESSION_STATE = web.RequestKey("authproxy_session_state", SessionState)
CODEC = web.AppKey("authproxy_cookie_codec", CookieCodec)
STORE = web.AppKey("authproxy_session_store", Store)


def session_state(request: web.Request) -> SessionState:
    state = request.get(SESSION_STATE)
    if state is None:
        cookies = own_cookies(request, request.app[CODEC].name)
        state = SessionState(request.app[STORE].owned_names(cookies), cookies)
        request[SESSION_STATE] = state
    return state


@web.middleware
async def load_session(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Load the session before the handler when the request carries one of the store's cookies."""
    state = session_state(request)
    if state.present:
        await state.load(request.app[STORE])
    return await handler(request)


def get_session(request: web.Request) -> Session | None:
    return session_state(request).get()


def set_session(request: web.Request, session: Session | None) -> None:
    """Replace (or with None, end) the request's session; the cookie follows on the response."""
    session_state(request).set(session)


async def commit_session(request: web.Request) -> None:
    """Store a new session now (not as headers go out), so a store failure is still a clean error page."""
    state = session_state(request)
    session = state.get()
    if session is not None and state.changed:
        state.saved = await request.app[STORE].save(session, request.cookies)


def defer_cookie(request: web.Request, set_cookie: str) -> None:
    """Send this ``Set-Cookie`` value on whichever response ends the request."""
    session_state(request).deferred.append(set_cookie)


async def write_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: write or clear the session cookies if this request changed them."""
    state = request.get(SESSION_STATE)
    if state is None:
        return
    for header in state.deferred:
        response.headers.add("Set-Cookie", header)
    if not state.changed:
        return
    codec, store = request.app[CODEC], request.app[STORE]
    written: set[str] = set()
    session = state.get()
    if session is not None:
        try:
            pairs = state.saved if state.saved is not None else await store.save(session, request.cookies)
        except AuthProxyError as exc:          # too big for cookies, or the store is down
            log.error("session not stored: %s", exc)
            pairs = []
        max_age = session.created_at + codec.config.expire - codec.clock()
        for name, value in pairs:
            written.add(name)
            if request.cookies.get(name) != value:       # a Redis ticket stays the same across refreshes
                response.headers.add("Set-Cookie", codec.set_header(name, value, max_age))
    elif state.present:
        try:
            await store.delete(request.cookies)
        except AuthProxyError as exc:
            log.error("session not deleted from the store: %s", exc)
    for name in state.present:
        if name not in written:
            response.headers.add("Set-Cookie", codec.clear_header(name))
