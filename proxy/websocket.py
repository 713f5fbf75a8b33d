"""WebSocket upgrades (RFC 6455), the client's side: authenticated like any request, then held by the session.

The gate has already authenticated the handshake (no session: a 302 or a 401, never an upgrade) and
chosen the upstream. Before anything reaches the app, the handshake must pass two more checks: the
upstream allows WebSockets (``upstreams[].websockets``), and ``Origin`` is the proxy's own
(``public_url``) or listed in ``websocket_origins``.

The Origin check is what stops Cross-Site WebSocket Hijacking. A browser sends the session cookie
on a WebSocket handshake that another page starts — any page on the same site (a sibling subdomain)
even with ``samesite: lax``, any page at all with ``samesite: none`` — and the handshake is not
subject to CORS, so without the check such a page could open a socket as the user. Browsers always
send ``Origin`` on a WebSocket handshake (RFC 6455 §4.1 item 8, §10.2; WHATWG WebSockets), so a
handshake *without* one comes from a non-browser client (a CLI, a server), which nobody else can make
carry the user's cookie: it is allowed — unless it carries ``Sec-Fetch-*`` headers, which only
browsers send. ``Origin: null`` (sandboxed frames, ``file:``) is refused. The rule is the same on
``skip_auth`` paths.

The app's side — the upstream handshake, which comes first (only once the app has accepted is the
client's upgrade answered, with the subprotocol the app chose), compression, and the frames relayed
both ways — is ``upstream/websocket.py``'s and ``upstream/frames.py``'s, like every other byte to and
from the app. A session may have ``limits.websockets_per_session`` sockets open at once (per worker); a
handshake beyond that gets a 429 before the app hears of it.

The handler returns as soon as the client has its 101: the client's connection stays with aiohttp's
request handler (its limits and its count), whose payload parser is now the relay's ``ClientSide``;
the request, its head and the middlewares' frames go. What an idle socket holds is two connections,
two sides, a relay, a ``LiveSocket`` in the registry and a timer handle (``bench/idle.py``: 6.4 KiB
of RSS per socket, both connections, against 36.9 with aiohttp's WebSocket objects and two tasks).
The access-log line and the close metrics come when the socket ends (``SocketLife.closed``).

A live socket ends with ``SESSION_ENDED`` (4401) when its session does, and with 1013 ("try again
later") when its access token expired and could not be renewed because the provider or the store was
unreachable: the session lives, and the client may reconnect. Every end goes through
``ending.SessionEnds``, which tells this module's ``SocketRegistry`` (``session_ended``): on sign-out,
back-channel logout, a refused refresh — in this worker, or in another one through the fan-out — the
registry ends the session's sockets, which also stops their timers. Each socket's ``SessionTimer`` (a
timer handle on the event loop, not a task: an idle socket is cheap) wakes at each access-token expiry
and at the session's hard end (``created_at + cookie.expire``); a session it cannot refresh past ends,
through ``SessionEnds`` too.
The refresh goes through the Refresher, so it is shared with the session's HTTP requests: the new
tokens cannot reach the browser's cookie over the socket, but the browser's next request with the old
cookie gets the same result from the Refresher's recent-results cache instead of spending the refresh
token again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_websocket import WS_KEY
from aiohttp.web_protocol import RequestHandler
from multidict import MultiMapping
from prometheus_client import Gauge

from .config import Config
from .context import CLOCK, CONFIG, REFRESHER, REQUEST_ID
from .ending import ENDS, Holds, Reason, SessionEnd, SessionEnds
from .errors import ProviderError, SessionEnded, StoreUnavailable, WebSocketRefused
from .metrics import METRICS
from .model import Session
from .redirects import allowed_origin
from .refresh import RECENT_TTL, Refresher
from .upstream import Upstream
from .upstream.frames import CLOSE_TIMEOUT, Close, FrameRelay, Side, close_frame
from .upstream.websocket import AppSocket, connect, requested_protocols

log = logging.getLogger("authproxy.websocket")

# Close code for "your session ended: sign in again". Private-use range (RFC 6455 §7.4.2), 4000 + the
# HTTP status, so a front end can tell it from the app's own codes and from network failures.
SESSION_ENDED = 4401
# The close reason a client sees for each way a session ends.
CLOSE_REASONS = {Reason.SIGN_OUT: "signed out", Reason.BACKCHANNEL: "signed out at the provider",
                 Reason.FRONTCHANNEL: "signed out at the provider",
                 Reason.EXPIRY: "session expired", Reason.REFRESH_REFUSED: "session expired",
                 Reason.COOKIE_LIMIT: "session ended", Reason.STEP_UP: "signed in again"}
# The close reason (with 1013, "try again later") when the access token expired and could not be renewed
# because the provider or the session store is unreachable: the session lives, and a client that
# reconnects gets a new socket as soon as they are back (4401 would tell it to sign in, which is untrue).
NOT_RENEWED = "session not renewed: try again later"
# Seconds slept past an expiry before checking it, so a wake-up is not a hair early.
EXPIRY_SLACK = 0.05
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class SocketLife:
    """An upgraded request, for its access-log line and metrics (``boundary.py``): when the 101 went out,
    and how the socket ended (None until it has). Its presence on a request means the client got a 101.
    The handler returns as soon as the relay has the connections, long before the socket ends: the
    boundary leaves ``on_close`` (what it needs of the request, not the request) for ``closed`` to call."""

    opened: float
    end: Close | None = None
    on_close: Callable[[SocketLife], object] | None = None

    def closed(self, end: Close) -> None:
        """The socket ended as ``end`` says: tell whoever waits for it (once)."""
        self.end = end
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self)


SOCKET_LIFE = web.RequestKey("authproxy_socket_life", SocketLife)


# -- recognising and checking the handshake -------------------------------------------------------


def is_websocket_upgrade(request: web.Request) -> bool:
    """A GET asking to switch to WebSocket: ``Connection: upgrade`` and ``Upgrade: websocket`` (RFC 6455 §4.2.1)."""
    if request.method != "GET":
        return False
    headers = request.headers
    connection = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    upgrade = {t.strip().lower() for v in headers.getall("Upgrade", ()) for t in v.split(",")}
    return "upgrade" in connection and "websocket" in upgrade


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` lowercased without a default port (RFC 6454 §6.2), or None when
    ``value`` is no http(s) origin (``null``, a path, userinfo, garbage)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def allowed_origins(config: Config) -> frozenset[str]:
    listed = (normalize_origin(o) for o in config.websocket_origins)
    return frozenset({config.public_origin, *(o for o in listed if o)})


def origin_allowed(headers: MultiMapping[str], config: Config) -> bool:
    """Whether a handshake with these headers may open a socket (see the module docstring)."""
    values = headers.getall("Origin", [])
    if not values:
        return not any(name in headers for name in ("Sec-Fetch-Mode", "Sec-Fetch-Site", "Sec-Fetch-Dest"))
    origin = normalize_origin(values[0]) if len(values) == 1 else None
    if origin is None:
        return False
    if origin in allowed_origins(config):
        return True
    # Many hosts, one sign-in: a page on an allowed host may open a socket to that same host (same origin).
    scheme, _, netloc = origin.partition("://")
    return netloc == headers.get("Host", "").lower() and allowed_origin(config, scheme, netloc) is not None


def _refusal(request: web.Request, upstream: Upstream) -> WebSocketRefused | None:
    """Why a handshake must not reach the app (the boundary answers it: a page or JSON), or None if it may."""
    if not upstream.config.websockets:
        return WebSocketRefused(403, "websockets_disabled", "Not allowed",
                                "WebSocket connections are not enabled for this application.")
    if not origin_allowed(request.headers, request.app[CONFIG]):
        log.warning("websocket refused: origin %.100r not allowed, rid=%s", request.headers.get("Origin"),
                    request[REQUEST_ID])
        return WebSocketRefused(403, "origin_not_allowed", "Not allowed",
                                "This page's origin may not open WebSocket connections to this application.")
    # Validates key and version only (RFC 6455 §4.2.1); offering the client's own subprotocols keeps
    # aiohttp from warning that none overlap: the app chooses among them later.
    if not web.WebSocketResponse(protocols=requested_protocols(request)).can_prepare(request).ok:
        return WebSocketRefused(400, "bad_handshake", "Bad request", "This is not a valid WebSocket handshake.")
    return None


# -- forwarding ------------------------------------------------------------------------------------


async def forward_websocket(request: web.Request, upstream: Upstream,
                            session: Session | None) -> web.StreamResponse:
    """Check the handshake, connect upstream, answer the client's upgrade, and hand both connections to a
    relay (``upstream/frames.py``); returns at once, so the handshake's request, its head and the
    middlewares' frames go while the socket lives on (about 10 KB of every idle socket).

    ``session`` is None only where the gate lets a request pass without one (``skip_auth``): such a
    socket carries no identity and has no session to outlive.
    """
    refusal = _refusal(request, upstream)
    if refusal is not None:
        raise refusal
    limits = request.app[CONFIG].limits
    registry = request.app.get(SOCKETS)
    if registry is not None and session is not None and session.id \
            and registry.count(session.id) >= limits.websockets_per_session:
        log.warning("websocket refused: sub=%s has %d open already, rid=%s", session.identity.sub,
                    limits.websockets_per_session, request[REQUEST_ID])
        raise WebSocketRefused(429, "too_many_websockets", "Too many connections",
                               "This session has too many WebSocket connections open; close some and try again.")
    place = _hold_place(registry, session)
    try:
        app_socket = await connect(request, upstream, session)
        response = SwitchingProtocols(request, app_socket)
        try:
            await response.prepare(request)
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client went away during the handshake")
        except BaseException:
            side = app_socket.side
            side.write(close_frame(WSCloseCode.GOING_AWAY, "client went away", masked=True))
            side.disconnect()
            raise
        request[SOCKET_LIFE] = SocketLife(time.perf_counter())
        _relay(request, app_socket, session)  # registers the socket itself, with no await since the count
    finally:
        if registry is not None and place is not None:
            registry.discard(place)
    return response


class SwitchingProtocols(web.StreamResponse):
    """The client's 101 (RFC 6455 §4.2.2), with the subprotocol and the extension the app agreed to.
    aiohttp writes it, so ``on_response_prepare`` (the session cookie) runs as for any response; after it
    the connection belongs to the relay, so there is no body and no end to write."""

    _length_check = False                   # aiohttp's WebSocketResponse's: no Content-Length, no chunks

    def __init__(self, request: web.Request, app_socket: AppSocket) -> None:
        super().__init__(status=101)
        key = request.headers.get("Sec-WebSocket-Key", "")       # checked by ``_refusal``
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_KEY).digest()).decode()
        self.headers.update({"Upgrade": "websocket", "Connection": "upgrade", "Sec-WebSocket-Accept": accept})
        if app_socket.protocol:
            self.headers["Sec-WebSocket-Protocol"] = app_socket.protocol
        if app_socket.extensions:
            self.headers["Sec-WebSocket-Extensions"] = app_socket.extensions
        self.force_close()

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        request.protocol.keep_alive(False)
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _hold_place(registry: SocketRegistry | None, session: Session | None) -> LiveSocket | None:
    """Count a handshake under way among its session's sockets, so that concurrent handshakes cannot
    all pass ``limits.websockets_per_session``: a LiveSocket standing in for it, which nothing waits
    on. Taken right after the count, with no await between; None when there is no session."""
    if registry is None or session is None or not session.id:
        return None
    place = LiveSocket(session.id, session)
    registry.add(place)
    return place


class ClientSide(Side):
    """The client's connection as a relay's side. aiohttp's request handler keeps the connection (its
    limits, its count, its ``send_timeout`` for a client that takes nothing); this is its payload parser
    (``set_parser``), which ``connections.LimitedHandler.start`` recognises by ``owns_connection``."""

    __slots__ = ("_draining", "_transport", "handler")
    masked = True
    owns_connection = True

    def __init__(self, handler: RequestHandler) -> None:
        super().__init__("client")
        self.handler = handler
        self._draining = False
        # Kept: aiohttp's ``force_close`` forgets the handler's transport while a gentle close still waits
        # for a client that reads nothing; an abort after that (the close timeout) must still reach it.
        self._transport = handler.transport

    def write(self, data: bytes | bytearray) -> None:
        handler = self.handler
        transport = handler.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if handler.writing_paused and not self._draining and self.relay is not None:
            # The client takes our bytes more slowly than the app sends them: read no more from the app
            # until it has (aiohttp's handler resolves its drain waiter on ``resume_writing``).
            self._draining = True
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(self._drained)
            handler._drain_waiter = waiter
            self.relay.upstream.pause_reading()

    def _drained(self, waiter: asyncio.Future[None]) -> None:
        self._draining = False
        if not waiter.cancelled():
            waiter.exception()                  # retrieved: a lost connection's error is no news
        if self.relay is not None:
            self.relay.upstream.resume_reading()

    def pause_reading(self) -> None:
        self.handler.pause_reading()

    def resume_reading(self) -> None:
        self.handler.resume_reading(resume_parser=False)

    def disconnect(self, abort: bool = False) -> None:
        transport = self.handler.transport or self._transport
        if abort and transport is not None:
            transport.abort()
        self.handler.force_close()


def _relay(request: web.Request, app_socket: AppSocket, session: Session | None) -> None:
    """Relay both ways until a side closes or vanishes or the session ends, then close both (``_closed``)."""
    app, rid = request.app, request[REQUEST_ID]
    sub = session.identity.sub if session is not None else "-"
    live = LiveSocket(session.id if session is not None else "", session)
    registry = app.get(SOCKETS)
    if registry is not None:
        registry.add(live)
    ends = app.get(ENDS)
    if session is not None and ends is not None and ends.ended(session):
        # It ended after the gate checked it, while the upstream answered the handshake: before the
        # socket was registered, so that end could not reach it. (Which end it was is not kept.)
        live.end(SESSION_ENDED, "session ended")
    timer = None
    if session is not None:
        hard_end = session.created_at + app[CONFIG].cookie.expire
        timer = SessionTimer(session, live, app[REFRESHER], app[CLOCK], hard_end, partial(_record_end, ends, session))
    active = app[METRICS].websockets
    active.inc()
    client = ClientSide(request.protocol)
    relay = FrameRelay(client, app_socket.side, app[CONFIG].limits.websocket_max_message, app_socket.deflate,
                       partial(_closed, request[SOCKET_LIFE], live, registry, timer, active, sub, rid))
    if live.ended.done():
        _end_relay(relay, live.ended)     # ended already: nothing buffered on either side is relayed
    request.protocol.set_parser(client)   # type: ignore[arg-type]   # what came after the head, first
    app_socket.side.start()
    live.ended.add_done_callback(partial(_end_relay, relay))
    if timer is not None:
        timer.start()
    log.info("websocket open: sub=%s path=%s rid=%s", sub, request.path, rid)


def _end_relay(relay: FrameRelay, ended: asyncio.Future[Close]) -> None:
    """The socket was asked to end (its session ended, its token could not be renewed, the proxy stops)."""
    relay.end(ended.result())


def _closed(life: SocketLife, live: LiveSocket, registry: SocketRegistry | None, timer: SessionTimer | None,
            active: Gauge, sub: str, rid: str, close: Close) -> None:
    """Both connections are gone: forget the socket, stop its timer, count and log how it ended. Nothing is
    left scheduled: a refresh under way is cancelled (it ends on its own)."""
    active.dec()
    if timer is not None:
        timer.cancel()
    if registry is not None:
        registry.discard(live)
    if not live.ended.done():
        live.ended.set_result(close)            # nothing waits on it any more: no callback to run later
    log.info("websocket closed: %d %s by %s sub=%s rid=%s", close.reported_code, close.reason, close.by, sub, rid)
    life.closed(close)


# -- the session behind a live socket ----------------------------------------------------------------


class SessionTimer:
    """Ends ``live`` with ``SESSION_ENDED`` when its session ends, then calls ``on_end`` with why it ended;
    ``on_end(None)``: only this socket ended — with 1013 (``NOT_RENEWED``: the provider or the store could
    not be reached to refresh, and the session itself lives on), or 1011 if the check itself failed.

    Wakes at each access-token expiry and refreshes through the Refresher (once per expiry, shared
    with the session's HTTP requests); a session that cannot be refreshed ends. A refresh moves the next
    wake-up to the new expiry. At ``hard_end`` (``created_at + cookie.expire``) it ends whatever the
    tokens say.

    A timer, not a task: an idle socket waits as one handle on the event loop (``loop.call_at``); a task
    exists only while a refresh is under way. ``cancel`` (the relay's, when the socket closes) drops both.
    """

    __slots__ = ("_clock", "_handle", "_hard_end", "_live", "_loop", "_on_end", "_refresher", "_session", "_task")

    def __init__(self, session: Session, live: LiveSocket, refresher: Refresher, clock: Callable[[], float],
                 hard_end: float, on_end: Callable[[Reason | None], object]) -> None:
        self._session, self._live, self._refresher, self._clock = session, live, refresher, clock
        self._hard_end, self._on_end = hard_end, on_end
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The first check, as soon as the loop gets to it (the relay has started by then)."""
        self._handle = self._loop.call_soon(self._check)

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop watching: the socket closed. Nothing is left scheduled; a refresh under way is cancelled
        and returned, for the caller to await."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    @property
    def scheduled(self) -> bool:
        """Whether a wake-up or a refresh is pending."""
        return self._handle is not None or self._task is not None

    @property
    def wakes_at(self) -> float | None:
        """The event loop's time of the next check, when one is timed (not during a refresh, not the first)."""
        handle = self._handle
        return handle.when() if isinstance(handle, asyncio.TimerHandle) else None

    def _check(self) -> None:
        self._handle = None
        try:
            now = self._clock()
            if now >= self._hard_end:
                self._finish(SESSION_ENDED, CLOSE_REASONS[Reason.EXPIRY], Reason.EXPIRY)
            elif self._session.access_expired(now):
                self._task = self._loop.create_task(self._refresh())
            else:
                expires_at = self._session.expires_at
                deadline = min(self._hard_end, expires_at if expires_at is not None else math.inf)
                self._handle = self._loop.call_later(deadline - now + EXPIRY_SLACK, self._check)
        except Exception:
            self._failed()

    async def _refresh(self) -> None:
        try:
            renewed = await _renewed(self._session, self._refresher, self._clock, self._hard_end)
        except Exception:
            self._task = None
            self._failed()
            return
        self._task = None
        if renewed is None:                     # the session lives; this socket cannot carry on for now
            self._finish(WSCloseCode.TRY_AGAIN_LATER, NOT_RENEWED, None)
        elif not isinstance(renewed, Session):
            self._finish(SESSION_ENDED, CLOSE_REASONS[Reason.EXPIRY], renewed)
        else:
            self._session = renewed
            self._check()

    def _finish(self, code: int, reason: str, why: Reason | None) -> None:
        self._live.end(code, reason)
        self._on_end(why)

    def _failed(self) -> None:
        log.exception("websocket session watch failed: sub=%s", self._session.identity.sub)
        self._finish(WSCloseCode.INTERNAL_ERROR, "internal error", None)


async def watch_session(session: Session, live: LiveSocket, refresher: Refresher, clock: Callable[[], float],
                        hard_end: float) -> Reason | None:
    """``SessionTimer`` as a coroutine: returns once ``live`` is ended, with why the session ended (None:
    only the socket did)."""
    done: asyncio.Future[Reason | None] = asyncio.get_running_loop().create_future()

    def ended(why: Reason | None) -> None:
        if not done.done():
            done.set_result(why)
    timer = SessionTimer(session, live, refresher, clock, hard_end, ended)
    timer.start()
    try:
        return await done
    finally:
        refreshing = timer.cancel()
        if refreshing is not None:
            await asyncio.gather(refreshing, return_exceptions=True)


async def _renewed(session: Session, refresher: Refresher, clock: Callable[[], float],
                   hard_end: float = math.inf) -> Session | Reason | None:
    """The session refreshed past its expiry; else why the session ended, or None when only the
    provider's absence keeps it from being refreshed.

    The result is remembered until the session's hard end: the browser's cookie still holds the
    refresh token spent here, and its next HTTP request must find the new tokens, not spend it again.
    """
    if not session.refresh_token:
        return Reason.EXPIRY
    try:
        fresh = await refresher.ensure_fresh(session, remember_for=max(hard_end - clock(), RECENT_TTL))
    # Grant gone; or the provider (or the Redis store holding the refresh lock) down with the token expired:
    # like the provider's absence, a store's is no internal error (1011 and a traceback) and ends no session.
    except (SessionEnded, ProviderError, StoreUnavailable) as exc:
        log.info("websocket session ended: sub=%s (%s)", session.identity.sub, type(exc).__name__)
        return Reason.REFRESH_REFUSED if isinstance(exc, SessionEnded) else None
    # An answer that is itself expired would have us refresh again at once, in a loop.
    return Reason.EXPIRY if fresh.access_expired(clock()) else fresh


def _record_end(ends: SessionEnds | None, session: Session, why: Reason | None) -> None:
    """A ``SessionTimer``'s ``on_end`` in the relay: an end of the session itself goes through ``SessionEnds``
    (in a task of its own: the relay, woken by the socket's end, cancels the timer next)."""
    if why is not None and ends is not None:
        ends.end_soon(ends.new(why, session_id=session.id))


# -- live sockets by session -------------------------------------------------------------------------


class LiveSocket:
    """One relayed connection as the registry sees it: whose session, and the way to end it."""

    __slots__ = ("ended", "session", "session_id")

    def __init__(self, session_id: str, session: Session | None = None) -> None:
        self.session_id = session_id
        self.session = session
        self.ended: asyncio.Future[Close] = asyncio.get_running_loop().create_future()

    def end(self, code: int, reason: str) -> None:
        """Ask the relay to close both sides with this code; the first request wins."""
        if not self.ended.done():
            self.ended.set_result(Close(code, reason))

    def let_go(self, end: SessionEnd) -> None:
        self.end(SESSION_ENDED, CLOSE_REASONS[end.reason])


class SocketRegistry(Holds[LiveSocket]):
    """Live sockets by session id, so that a session's end ends its sockets at once.

    After ``end_all`` (the app shutting down, or a reload draining the old app) a socket registered late —
    its handshake was under way — is ended at once too: missed, it hung, neither relayed nor closed."""

    def __init__(self) -> None:
        super().__init__("websocket")
        self._all_ended: Close | None = None

    def add(self, held: LiveSocket) -> None:
        super().add(held)
        if self._all_ended is not None:
            held.end(self._all_ended.code, self._all_ended.reason)

    def end_all(self, code: int, reason: str) -> int:
        self._all_ended = Close(code, reason)
        sockets = list(self)
        for live in sockets:
            live.end(code, reason)
        return len(sockets)


SOCKETS = web.AppKey("authproxy_websockets", SocketRegistry)


def setup_websockets(app: web.Application) -> None:
    """Give ``app`` its live-socket registry, and end every socket when the app shuts down.

    Call from ``create_app`` (before the app is frozen); calling twice does nothing more.
    """
    if SOCKETS in app:
        return
    app[SOCKETS] = SocketRegistry()
    app.on_shutdown.append(_end_all_sockets)


async def _end_all_sockets(app: web.Application) -> None:
    """End every socket, and wait (up to the close handshake's timeout) until their connections are gone:
    no task of theirs keeps aiohttp's shutdown waiting, as the relay's tasks did."""
    registry = app[SOCKETS]
    count = registry.end_all(WSCloseCode.GOING_AWAY, "proxy shutting down")
    if count:
        log.info("ending %d websocket(s) for shutdown", count)
        deadline = time.monotonic() + CLOSE_TIMEOUT + 0.5
        while len(registry) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
