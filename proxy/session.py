"""The session on a request's path: loading it when asked, writing its cookie as headers go out.

The value (``Identity``, ``Session``) is ``model.py``'s, re-exported here for callers that have always
found it here; how it is sealed into cookies — chunking, the decoded-session cache, ``Set-Cookie``
values — is ``cookies.py``'s. This module is the request path around them, with the keys under which
the codec, the store and each request's state are found.

Loading is lazy (``get_session``, awaited by the handlers that need a session): requests that never
ask — ``/ping``, ``skip_auth`` paths, allowed CORS preflights — pay nothing and pass whatever cookie
they carry, even while a Redis store is down. Writing happens once, in ``write_session_cookie`` on
``app.on_response_prepare``, and only when the handler changed the session: that hook fires for
raised redirects and for streamed upstream responses alike, where a middleware running after the
handler would be too late. It does not write back a session that ended while the request was in
flight (``ending.py``): it clears the cookie instead.

A cookie that does not open, or whose session has ended, is an anonymous user: a warning in the log,
the cookie cleared, never a 500 (aiohttp-session does the same).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from .context import REFRESHER
from .cookies import CookieCodec, own_cookies
from .ending import ENDS, Reason
from .errors import AuthProxyError, CookieError, SessionTooLarge, SessionWasEnded
from .model import Identity, Session, claim_at
from .store import SessionStore

log = logging.getLogger("authproxy.session")


class SessionState:
    """The per-request view of the session: loaded once, when first asked (``get_session``), written
    only if changed.

    ``deferred`` holds other ``Set-Cookie`` values (such as clearing a spent login cookie) that must
    reach the browser whatever response ends the request, error pages included.
    """

    __slots__ = ("_session", "changed", "cookies", "deferred", "loaded", "present", "saved", "touch_only")

    def __init__(self, present: list[str], cookies: Mapping[str, str]) -> None:
        self.cookies = cookies                    # the session's own cookies, read as browsers mean them
        self._session: Session | None = None
        self.loaded = not present                 # no cookie of ours: nothing to load
        self.changed = False
        self.present = present
        self.deferred: list[str] = []
        self.saved: list[tuple[str, str]] | None = None
        self.touch_only = False                   # changed only to record a use (idle timeout)

    @classmethod
    def loaded_with(cls, present: list[str], cookies: Mapping[str, str], session: Session) -> SessionState:
        """The state of a request whose session was loaded already (the express lane loads it itself)."""
        state = cls(present, cookies)
        state._session, state.loaded = session, True
        return state

    async def load(self, store: SessionStore) -> Session | None:
        """The session in the request's cookies, read from the store on the first call only.

        ``StoreUnavailable`` passes through (a 503 for what needs the session), and the next call tries again.
        """
        if not self.loaded:
            try:
                self._session = await store.load(self.cookies)
            except CookieError as exc:
                log.warning("session cookie ignored: %s", exc)
                self._session = None
                self.changed = True                 # clear the bad cookie
            self.loaded = True
        return self._session

    def peek(self) -> Session | None:
        """The session if it was loaded, for the access log (never loads it)."""
        return self._session

    def set(self, session: Session | None, *, touch_only: bool = False) -> None:
        self._session = session
        self.loaded = self.changed = True
        self.saved = None
        self.touch_only = touch_only


SESSION_STATE = web.RequestKey("authproxy_session_state", SessionState)
CODEC = web.AppKey("authproxy_cookie_codec", CookieCodec)
STORE = web.AppKey("authproxy_session_store", SessionStore)


def session_state(request: web.Request) -> SessionState:
    state = request.get(SESSION_STATE)
    if state is None:
        cookies = own_cookies(request, request.app[CODEC].name)
        state = SessionState(request.app[STORE].owned_names(cookies), cookies)
        request[SESSION_STATE] = state
    return state


async def get_session(request: web.Request) -> Session | None:
    """The request's session, loaded now if this is the first time anyone asks."""
    return await session_state(request).load(request.app[STORE])


def cookie_session_id(request: web.Request) -> str | None:
    """The id of the session the request's cookies name, without loading it (no I/O): what a sign-out
    can still end when the store is down."""
    return request.app[STORE].session_id(session_state(request).cookies)


def set_session(request: web.Request, session: Session | None, *, touch_only: bool = False) -> None:
    """Replace (or with None, drop) the request's session; the cookie follows on the response.

    ``touch_only``: the session changed only in its last-seen time (``cookie.idle_timeout``); as the
    cookie goes out it takes the newest tokens the Refresher knows for it, so a use recorded while
    another request of the session refreshed cannot put the spent refresh token back in the browser.
    Dropping it only clears this browser's cookie: ending a session is ``ending.SessionEnds.end``'s.
    """
    session_state(request).set(session, touch_only=touch_only)


async def commit_session(request: web.Request) -> None:
    """Store a new session now (not as headers go out), so a store failure is still a clean error page.

    This is the sign-in's save, so it is also where the new cookies are held against
    ``cookie.header_budget`` (``CookieCodec.check_budget``: a warning in the log, nothing more)."""
    state = session_state(request)
    session = state.peek()
    if session is not None and state.changed:
        state.saved = await request.app[STORE].save(session, state.cookies)
        request.app[CODEC].check_budget(session, state.saved)


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
    codec = request.app[CODEC]
    written: set[str] = set()
    session = state.peek()
    if session is not None and state.touch_only and REFRESHER in request.app:
        session = await request.app[REFRESHER].newest(session)
    if session is not None:
        max_age = session.created_at + codec.config.expire - codec.clock()
        for name, value in await _stored(request, state, session):
            written.add(name)
            if state.cookies.get(name) != value:       # a Redis ticket stays the same across refreshes
                response.headers.add("Set-Cookie", codec.set_header(name, value, max_age))
    for name in state.present:
        if name not in written:
            response.headers.add("Set-Cookie", codec.clear_header(name))


async def _stored(request: web.Request, state: SessionState, session: Session) -> list[tuple[str, str]]:
    """The cookies of the saved session; none (so the browser's are cleared) when the session ended
    while the request was in flight or does not fit in cookies. When the store is down, the browser's
    own, unchanged: they still name the session (a Redis ticket stays the same across refreshes, whose
    tokens ``Refresher`` saved under its lock), and clearing them would sign the user out."""
    ends = request.app.get(ENDS)
    if ends is not None and state.saved is None and ends.ended(session):
        log.info("session ended while a request was in flight: not written back (sub=%s)", session.identity.sub)
        return []
    try:
        return state.saved if state.saved is not None else await request.app[STORE].save(session, state.cookies)
    except SessionWasEnded as exc:
        log.info("session not written back: %s (sub=%s)", exc, session.identity.sub)
    except SessionTooLarge as exc:
        log.error("session ended: %s", exc)
        if ends is not None:
            try:
                await ends.end(ends.new(Reason.COOKIE_LIMIT, session_id=session.id))
            except AuthProxyError as failure:
                log.error("the session's end could not be recorded: %s", failure)
    except AuthProxyError as exc:              # the store is down
        log.error("session not stored (the browser keeps its cookies): %s", exc)
        return [(name, state.cookies[name]) for name in state.present]
    return []


__all__ = ["CODEC", "SESSION_STATE", "STORE", "Identity", "Session", "SessionState", "claim_at", "commit_session",
           "defer_cookie", "get_session", "set_session", "write_session_cookie"]
