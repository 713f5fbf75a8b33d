"""The session: what a signed-in browser carries, how it is sealed into cookies, and when it is written.

The session lives entirely in the browser, sealed by ``crypto.Sealer`` with the cookie's name as
associated data, so the browser can neither read nor forge it. A sealed session bigger than one
cookie can hold (browsers keep ~4096 bytes of name and value) is split into ``NAME_0``, ``NAME_1``…
and joined again on the way in; a reordered or missing chunk simply fails authentication.

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
import time
from collections import OrderedDict
from http.cookies import Morsel
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from aiohttp import web

from .config import ClaimsConfig, CookieConfig
from .crypto import Sealer
from .errors import AuthProxyError, CookieError, SessionTooLarge, TokenValidationError

log = logging.getLogger("authproxy.session")

# Bytes of sealed value per cookie: browsers cap name+value near 4096; leave room for the name.
CHUNK_SIZE = 3800
# More chunks than this is a session no browser would send back whole (≈ 30 KB of headers).
MAX_CHUNKS = 8
# Decoded sessions remembered by their exact sealed value (see ``CookieCodec._decoded``).
DECODED_CACHE_SIZE = 4096


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


class CookieCodec:
    """Turns a Session into ``(cookie name, value)`` pairs and back, chunking big values."""

    def __init__(self, config: CookieConfig, sealer: Sealer, clock: Callable[[], float] = time.time):
        self.config = config
        self.name = config.name
        self._sealer = sealer
        self._aad = config.name.encode("utf-8")
        self.clock = clock
        self._cache: OrderedDict[str, Session] = OrderedDict()

    def owned_names(self, cookies: Mapping[str, str]) -> list[str]:
        """The session cookie names present in a request: the plain name and any chunks."""
        prefix = self.name + "_"
        return [n for n in cookies if n == self.name or (n.startswith(prefix) and n[len(prefix):].isdigit())]

    def dump(self, session: Session) -> list[tuple[str, str]]:
        sealed = self._sealer.seal(session.to_bytes(), self._aad)
        if len(sealed) <= CHUNK_SIZE:
            return [(self.name, sealed)]
        parts = [sealed[i:i + CHUNK_SIZE] for i in range(0, len(sealed), CHUNK_SIZE)]
        if len(parts) > MAX_CHUNKS:
            raise SessionTooLarge(len(sealed), len(parts))
        return [(f"{self.name}_{i}", part) for i, part in enumerate(parts)]

    def load(self, cookies: Mapping[str, str]) -> Session | None:
        """The session in these cookies; None if there is none; CookieError if it is bad or over."""
        sealed = cookies.get(self.name)
        if sealed is None:
            parts = []
            for i in range(MAX_CHUNKS + 1):
                part = cookies.get(f"{self.name}_{i}")
                if part is None:
                    break
                parts.append(part)
            if not parts:
                return None
            sealed = "".join(parts)
        session = self._decoded(sealed)
        now = self.clock()
        if session.created_at + self.config.expire <= now:
            raise CookieError("session is older than cookie.expire")
        if session.access_expired(now) and not session.refresh_token:
            raise CookieError("access token expired and there is no refresh token")
        return session

    def _decoded(self, sealed: str) -> Session:
        """Open and parse ``sealed``, once per distinct value: a browser sends the same cookie on
        every request until it changes. Saves the AES-GCM open and JSON parse (≈10 µs of ≈12 µs per
        request, measured with a 2.8 KB cookie). Safe because the key is the exact authenticated
        ciphertext; the expiry checks in ``load`` still run on every request."""
        session = self._cache.get(sealed)
        if session is not None:
            self._cache.move_to_end(sealed)
            return session
        session = Session.from_bytes(self._sealer.open(sealed, self._aad))
        self._cache[sealed] = session
        if len(self._cache) > DECODED_CACHE_SIZE:
            self._cache.popitem(last=False)
        return session

    def set_header(self, name: str, value: str, max_age: float) -> str:
        c = self.config
        return cookie_header(name, value, max_age=max_age, path=c.path, domain=c.domain, secure=c.secure,
                             samesite=c.samesite.capitalize())

    def clear_header(self, name: str) -> str:
        c = self.config
        return cookie_header(name, "", max_age=0, path=c.path, domain=c.domain, secure=c.secure,
                             samesite=c.samesite.capitalize())


def cookie_header(name: str, value: str, *, max_age: float, path: str, domain: str | None, secure: bool,
                  samesite: str) -> str:
    """A ``Set-Cookie`` value, always ``HttpOnly``.

    Built by hand because ``on_response_prepare`` runs after aiohttp has turned ``set_cookie`` calls
    into headers (aiohttp 3.14 ``StreamResponse._start``): cookies must be added as headers there.
    """
    morsel: Morsel[str] = Morsel()
    morsel.set(name, value, value)
    morsel["max-age"] = str(max(int(max_age), 0))
    morsel["path"] = path
    if domain:
        morsel["domain"] = domain
    morsel["secure"] = secure
    morsel["httponly"] = True
    morsel["samesite"] = samesite
    if max_age <= 0:
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    return morsel.OutputString()


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


# The characters of the values the proxy writes (a version prefix and base64url): such a value needs no
# unquoting, so it reads the same whatever parser reads it.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._~-]*")


def own_cookies(request: web.Request, name: str) -> Mapping[str, str]:
    """The session cookies (``name`` and its chunks ``name_N``) of a request, read without parsing every
    cookie: aiohttp's ``request.cookies`` runs a regex over the whole header and builds a Morsel per
    cookie, which was 8 % of a tiny proxied GET with a 2.8 KB session cookie. No ``name`` in the header
    at all skips the work; anything unusual (quotes, escapes, a name twice, a value the proxy would not
    write) is left to ``request.cookies``, so the answer is always the one aiohttp would give."""
    raw = request.headers.get("Cookie")
    if raw is None or name not in raw:
        return {}
    if '"' in raw or "\\" in raw:
        return request.cookies
    found: dict[str, str] = {}
    prefix = name + "_"
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key == name or (key.startswith(prefix) and key[len(prefix):].isdigit()):
            value = value.strip()
            if not sep or key in found or not _PLAIN_VALUE.fullmatch(value):
                return request.cookies
            found[key] = value
    return found


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
