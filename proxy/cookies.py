"""The session cookie's format: how a Session is sealed into cookie values and read back.

The session lives entirely in the browser, sealed by ``crypto.Sealer`` with the cookie's name as
associated data, so the browser can neither read nor forge it. A sealed session bigger than one
cookie can hold (browsers keep ~4096 bytes of name and value) is split into ``NAME_0``, ``NAME_1``…
and joined again on the way in; a reordered or missing chunk simply fails authentication.

Every reader of the ``Cookie`` header goes through ``request_cookies`` (session loading, login
state, ``own_cookies``): one parser, the browsers' reading of RFC 6265 §4.2.1/§5.4, so no other
parser can see a cookie the browser did not send. Names the proxy owns that arrive twice are
ambiguous — a cookie tossed from a sibling subdomain, or planted under another path — and count as
a bad cookie, never as either value. ``CookieCodec`` remembers the sessions it opened by their
sealed bytes (canonically decoded, so one session has one key), within a memory budget.
With ``cookie.minimal`` the ID token is left out of what is sealed (see ``CookieCodec.dump``); at sign-in
``CookieCodec.check_budget`` warns when the session's ``Set-Cookie`` headers come near
``cookie.header_budget``. ``cookie_header`` builds the ``Set-Cookie`` values, for the session and the login;
``private_when_setting_own`` keeps shared caches from storing a response that sets one of them.

The Session value is ``model.py``'s; the request path that uses this codec is ``session.py``'s.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from http.cookies import Morsel
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import CookieError, SessionTooLarge
from .model import Session

if TYPE_CHECKING:
    from .config import CookieConfig
    from .crypto import Sealer

log = logging.getLogger("authproxy.session")

# Browsers drop a cookie whose name and value together exceed this (RFC 6265bis §5.6, step 4).
MAX_COOKIE_BYTES = 4096
# Bytes of sealed value per cookie: browsers cap name+value near 4096; leave room for the name.
CHUNK_SIZE = 3800
# More chunks than this is a session no browser would send back whole (≈ 30 KB of headers).
MAX_CHUNKS = 8
# Decoded sessions remembered by their sealed bytes (see ``CookieCodec._decoded``): at most this many,
# and at most this much memory by the estimate ``_cache_cost`` (a 3 KB cookie holds ≈ 5 KB).
DECODED_CACHE_SIZE = 4096
DECODED_CACHE_BYTES = 16 * 1024 * 1024
# A cached session not sent for this long is dropped at the next miss: an active browser sends its
# cookie every few seconds, while the cookies a refresh replaced or a sign-out cleared never come back.
# Without it the cache held every session of the last 4096 cookies seen, long gone or not (the soak's
# workers grew for 20 minutes).
DECODED_CACHE_IDLE = 300.0
# Python objects behind one cached session beyond its bytes (Session, Identity, the dict entry). With
# it the estimate runs ≈ 1 KB above what tracemalloc measured for sessions of 0.4 to 40 KB.
_CACHE_ENTRY_OVERHEAD = 1536
# A sign-in warns once its session's Set-Cookie headers reach this fraction of ``cookie.header_budget``:
# the app's own cookies and the request's other headers share the front server's limit.
BUDGET_WARN_AT = 0.75
# At most one such warning per process this often (with how many sign-ins came near since the last one):
# one big group claim would otherwise log a line per sign-in.
BUDGET_WARN_EVERY = 3600.0


class CookieCodec:
    """Turns a Session into ``(cookie name, value)`` pairs and back, chunking big values."""

    def __init__(self, config: CookieConfig, sealer: Sealer, clock: Callable[[], float] = time.time):
        self.config = config
        self.name = config.name
        self._sealer = sealer
        self._aad = config.name.encode("utf-8")
        self.clock = clock
        self._cache: OrderedDict[str, list[Any]] = OrderedDict()     # sealed -> [session, cost, last used]
        self.cache_bytes = 0
        self._parse = Session.from_bytes
        self._names = session_cookie_names(config.name)
        self._over_budget = 0                     # sign-ins near the budget since the last warning
        self._budget_quiet_until = float("-inf")

    def owned_names(self, cookies: Mapping[str, str]) -> list[str]:
        """The session cookie names present in a request: the plain name and any chunks."""
        return [n for n in cookies if n in self._names]

    def dump(self, session: Session) -> list[tuple[str, str]]:
        """The cookies that hold ``session``. With ``cookie.minimal`` the ID token is not sealed: refresh,
        the identity headers and authorization do not need it (the identity is kept, and re-derived from
        the ID token a refresh returns); only RP-initiated logout loses its ``id_token_hint``."""
        if self.config.minimal and session.id_token is not None:
            session = replace(session, id_token=None)
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
        if REPEATED in sealed:
            raise CookieError(f"a {self.name} cookie arrived more than once (tossed or planted by another site?)")
        session = self._decoded(sealed)
        now = self.clock()
        if session.created_at + self.config.expire <= now:
            raise CookieError("session is older than cookie.expire")
        if session.access_expired(now) and not session.refresh_token:
            raise CookieError("access token expired and there is no refresh token")
        if session.idle_expired(self.config.idle_timeout, now):
            raise CookieError("session unused for longer than cookie.idle_timeout")
        return session

    def check_budget(self, session: Session, cookies: list[tuple[str, str]]) -> None:
        """At sign-in: warn (at most once per ``BUDGET_WARN_EVERY``) when the ``Set-Cookie`` headers that
        carry ``cookies`` come near ``cookie.header_budget``, naming the sizes and the fixes — never a token."""
        size = sum(len(self.set_header(name, value, self.config.expire)) for name, value in cookies)
        budget = self.config.header_budget
        if size < budget * BUDGET_WARN_AT:
            return
        self._over_budget += 1
        now = self.clock()
        if now < self._budget_quiet_until:
            return
        self._budget_quiet_until = now + BUDGET_WARN_EVERY
        count, self._over_budget = self._over_budget, 0
        minimal = "is on already" if self.config.minimal else \
            f"true (leaves out the ID token, {len(session.id_token or '')} bytes here)"
        log.warning("session cookies near the header budget: %d bytes of Set-Cookie in %d cookie(s), "
                    "cookie.header_budget is %d (warning from %d); %d sign-in(s) like this since the last "
                    "warning. Front servers refuse large headers (nginx: 8 KB per line by default). To shrink "
                    "them: cookie.minimal %s, session.store: redis (the cookie becomes a ticket of about 200 "
                    "bytes), or fewer scopes and claims (access token %d bytes, refresh token %d bytes, "
                    "%d groups)", size, len(cookies), budget, int(budget * BUDGET_WARN_AT), count, minimal,
                    len(session.access_token), len(session.refresh_token or ""), len(session.identity.groups))

    def _decoded(self, sealed: str) -> Session:
        """Open and parse ``sealed``, once per distinct value: a browser sends the same cookie on
        every request until it changes. Saves the AES-GCM open and JSON parse (≈10 µs of ≈12 µs per
        request, measured with a 2.8 KB cookie). Safe because the key is the authenticated ciphertext
        itself in its one canonical spelling: a value enters the cache only after ``Sealer.unwrap`` has
        decoded it strictly (one spelling per ciphertext) and it opened, so respelling a value makes no
        new entry, and a hit costs one dict lookup (no base64 decoding). The cache is bounded by memory
        as well as by count, so big sessions cannot crowd a worker; the expiry checks in ``load`` still
        run on every request."""
        hit = self._cache.get(sealed)
        now = time.monotonic()
        if hit is not None:
            self._cache.move_to_end(sealed)
            hit[2] = now
            cached: Session = hit[0]
            return cached
        raw = self._sealer.unwrap(sealed)
        plain = self._sealer.open_raw(raw, self._aad)
        session = self._parse(plain)
        cost = _cache_cost(raw, plain) + len(sealed)
        self._cache[sealed] = [session, cost, now]
        self.cache_bytes += cost
        # Least recently used first: drop what is over the bounds, and what nobody sent for a while (a
        # cookie replaced by a refresh, a signed-out browser) — or the cache fills with history.
        cache, idle_since = self._cache, now - DECODED_CACHE_IDLE
        while cache:
            oldest = next(iter(cache.values()))
            if len(cache) <= DECODED_CACHE_SIZE and self.cache_bytes <= DECODED_CACHE_BYTES and oldest[2] > idle_since:
                break
            self.cache_bytes -= cache.popitem(last=False)[1][1]
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


def _cache_cost(raw: bytes, plain: bytes) -> int:
    """The memory one cached session holds: its key, its strings (about the plaintext's size) and objects."""
    return len(raw) + len(plain) + _CACHE_ENTRY_OVERHEAD


@functools.lru_cache(maxsize=16)
def session_cookie_names(name: str) -> frozenset[str]:
    """The names the session may use: ``name`` and its chunks ``name_0`` … (ASCII digits, bounded).
    ``str.isdigit`` would also take ``²`` or ``٣``, names no ``Set-Cookie`` can clear."""
    return frozenset({name, *(f"{name}_{i}" for i in range(MAX_CHUNKS + 1))})


# -- reading the Cookie header ---------------------------------------------------------------------

# RFC 6265 §4.1.1: a cookie name is an RFC 9110 §5.6.2 token. Only such names can be written back (or
# cleared) in a Set-Cookie, so the proxy considers no other name its own.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The value a name the proxy owns reads as when it arrived more than once: no sealed value contains a
# NUL, so it never opens, and ``CookieCodec.load`` names the reason.
REPEATED = "\x00repeated"


def is_token(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def cookie_pairs(header: str) -> Iterator[tuple[str, str]]:
    """The ``(name, value)`` pairs of a ``Cookie`` header, as the browser that sent it means them.

    Browsers join cookies with ``"; "`` (RFC 6265 §5.4 step 4) and nothing else separates them: a
    value may hold spaces, ``=`` and quotes (``pref=dark _authproxy=x "`` is one cookie, ``pref``).
    A pair without ``=`` is a cookie with an empty name (RFC 6265bis §5.6 step 3). Whitespace around
    names and values is dropped (RFC 6265 §5.2 steps 4–5); quotes are part of the value.
    """
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            name, value = "", name
        yield name.strip(" \t"), value.strip(" \t")


class RequestCookies(Mapping[str, str]):
    """A request's cookies: each name's first value, and which names came more than once.

    Browsers send the most specific cookie first (longest path, then oldest: RFC 6265 §5.4 step 2),
    so the first value is what an app would expect for its own cookies. For the proxy's names a
    repeat is ambiguous: ``owned`` reads them as ``REPEATED``.
    """

    __slots__ = ("_first", "repeated")

    def __init__(self, header: str) -> None:
        self._first: dict[str, str] = {}
        self.repeated: set[str] = set()
        for name, value in cookie_pairs(header):
            if name in self._first:
                self.repeated.add(name)
            else:
                self._first[name] = value

    def __getitem__(self, name: str) -> str:
        return self._first[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def owned(self, name: str) -> str:
        """The value of one of the proxy's cookies: ``REPEATED`` if it came twice (``KeyError`` if never)."""
        return REPEATED if name in self.repeated else self._first[name]


_REQUEST_COOKIES = web.RequestKey("authproxy_request_cookies", RequestCookies)


def request_cookies(request: web.Request) -> RequestCookies:
    """The request's cookies (``RequestCookies``), parsed once per request. Use this, never
    ``request.cookies``: aiohttp's parser ends a pair at whitespace and lets the last duplicate win,
    so it reads ``pref=dark _authproxy=x`` as a second ``_authproxy``."""
    cookies = request.get(_REQUEST_COOKIES)
    if cookies is None:
        cookies = RequestCookies(request.headers.get("Cookie", ""))
        request[_REQUEST_COOKIES] = cookies
    return cookies


def own_cookies(request: web.Request, name: str) -> Mapping[str, str]:
    """The session cookies (``name`` and its chunks ``name_N``) of a request. A request without
    ``name`` anywhere in its ``Cookie`` header is not parsed at all; one of these names sent twice
    reads as ``REPEATED``, which no store opens: the user is signed out and the cookie cleared."""
    raw = request.headers.get("Cookie")
    if raw is None or name not in raw:
        return {}
    cookies = request_cookies(request)
    names = session_cookie_names(name)
    return {n: cookies.owned(n) for n in cookies if n in names}


# -- responses that set our cookies ------------------------------------------------------------------

# Directives that let a shared cache store a response (RFC 9111 §5.2.2.9, §5.2.2.10) or that "private"
# replaces. Quoted values may hold commas, so directives are matched, not split.
_SHARED_DIRECTIVES = frozenset({"public", "s-maxage", "private", "proxy-revalidate"})
_DIRECTIVE = re.compile(r'\s*([^,=\s]+)(\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')
# Cache-Control fields aimed at CDNs only (RFC 9213 and its predecessor), which CDNs obey over
# Cache-Control: they would undo "private".
_TARGETED_CACHE_FIELDS = ("CDN-Cache-Control", "Surrogate-Control")


def private_cache_control(value: str) -> str:
    """``value`` (a Cache-Control field, maybe empty) made ``private``: ``public`` and ``s-maxage``
    dropped, every other directive (``max-age``, ``no-store`` …) kept for the browser's own cache."""
    kept = [m.group(1) + (m.group(2) or "") for m in _DIRECTIVE.finditer(value)
            if m.group(1).lower() not in _SHARED_DIRECTIVES]
    return ", ".join(["private", *kept])


def sets_cookie_named(response: web.StreamResponse, name: str) -> bool:
    """Whether the response sets or clears ``name`` or a cookie derived from it (``name_…``)."""
    return any(h.startswith(name) and h[len(name):len(name) + 1] in ("=", "_")
               for h in response.headers.getall("Set-Cookie", ()))


def private_when_setting_own(name: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook, to run after every hook that adds the proxy's cookies: a
    response that sets or clears one of them (``name``, its chunks, login state) becomes
    ``Cache-Control: private`` (RFC 9111 §5.2.2.7, §8: a shared cache would hand the Set-Cookie to the
    next visitor), whatever the app said. The app's ``max-age`` and ``no-store`` stay for the browser's
    own cache; ``public``, ``s-maxage`` and the CDN-only fields go."""
    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        if sets_cookie_named(response, name):
            make_private(response)
    return hook


def make_private(response: web.StreamResponse) -> None:
    """Mark ``response`` as for this browser only (``private_cache_control``, no CDN-only fields)."""
    response.headers["Cache-Control"] = private_cache_control(", ".join(response.headers.getall("Cache-Control", ())))
    for field in _TARGETED_CACHE_FIELDS:
        response.headers.popall(field, None)
