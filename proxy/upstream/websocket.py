"""The app's side of a WebSocket (RFC 6455): opening the upstream connection and relaying frames with the app.

``proxy/websocket.py`` owns the client's side: it authenticates the upgrade, checks its ``Origin``,
counts the session's sockets and ends them with the session. Once a handshake has passed all that, it
calls ``connect`` here, and only once the app has accepted does it answer the client's upgrade, with
the subprotocol the app chose. A refusal or an unreachable app is a 502 the client sees (504 when the
app does not answer in time), never a socket that opens and dies at once.

The upstream handshake carries the HTTP header policy (``Forwarder.request_headers``: Bearer token
and identity headers set, spoofed ones stripped) minus the handshake fields of the client's
(``HANDSHAKE_FIELDS``), which the proxy sets itself: its own key, the client's subprotocols in the
client's order, and the client's permessage-deflate offers (RFC 7692), only when it made some. The
app's answer is checked (101, ``Upgrade``, ``Connection``, the key's ``Sec-WebSocket-Accept``, an
extension answer the client could have asked for); what it agreed to goes to the client as it is, so
compression is agreed end to end: the proxy neither compresses nor inflates for either side (it
inflates what the client sends only to measure it, ``frames.py``). Before, each hop agreed its own
parameters and the proxy held a compressor and a decompressor for each.

Once the app has answered, the connection is taken from aiohttp's client (``_take_over``): its
transport reads into an ``AppSide``, one side of the ``frames.FrameRelay`` that passes frames both
ways with no task; the response, its head and the request's headers as sent go at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web
from aiohttp.http_websocket import WS_KEY
from yarl import URL

from ..errors import UpstreamError, UpstreamTimeout
from ..model import Session
from ..paths import normalized_path
from .forward import FORWARDER, UPSTREAM_LABEL, Upstream
from .frames import CLOSE_TIMEOUT, Close, Deflate, Side, deflate_answer, deflate_offers, relayable_code, vanished

__all__ = ["CLOSE_TIMEOUT", "AppSide", "AppSocket", "Close", "connect", "relayable_code", "requested_protocols",
           "upstream_ws_url", "vanished"]

# The client side's logger: an operator reads a socket's whole story, both sides, under one name.
log = logging.getLogger("authproxy.websocket")

# Handshake fields the proxy sets itself (RFC 6455 §4.1); the client's would clash with them.
# Sec-WebSocket-Protocol is the client's list, Sec-WebSocket-Extensions its permessage-deflate offers only.
HANDSHAKE_FIELDS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                    "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept", "Connection", "Upgrade")
_WS_SCHEMES = {"http": "ws", "https": "wss"}


# -- the handshake with the app ----------------------------------------------------------------------


def requested_protocols(request: web.Request) -> tuple[str, ...]:
    """The client's ``Sec-WebSocket-Protocol`` list, in its order of preference (RFC 6455 §4.1)."""
    return tuple(p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",")
                 if p.strip())


def upstream_ws_url(upstream: Upstream, request: web.Request) -> URL:
    """The upstream URL as ``Forwarder.forward`` builds it (normalised path, ``strip_prefix``, raw
    query), with ws/wss for http/https; a unix socket's ``http://localhost`` becomes ``ws://localhost``."""
    url = upstream.target(normalized_path(request), request.rel_url.raw_query_string)
    return url.with_scheme(_WS_SCHEMES.get(url.scheme, url.scheme))


class AppSocket(NamedTuple):
    """The app's side of an open socket: its connection, and what the app agreed to, to tell the client."""

    side: AppSide
    protocol: str | None          # the subprotocol the app chose among the client's
    extensions: str | None        # the app's Sec-WebSocket-Extensions answer, for the client as it is
    deflate: Deflate | None       # that answer read


async def connect(request: web.Request, upstream: Upstream, session: Session | None) -> AppSocket:
    """Open the WebSocket to the app for the client's handshake ``request``; an UpstreamError (502) when
    the app refuses or cannot be reached, an UpstreamTimeout (504) when it does not answer in time."""
    headers = request.app[FORWARDER].request_headers(request, session, upstream)
    for name in HANDSHAKE_FIELDS:
        headers.popall(name, None)
    key = base64.b64encode(os.urandom(16)).decode()
    protocols = requested_protocols(request)
    offers = deflate_offers(request.headers.getall("Sec-WebSocket-Extensions", []))
    headers.extend({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": key})
    if protocols:
        headers["Sec-WebSocket-Protocol"] = ",".join(protocols)
    if offers:
        headers["Sec-WebSocket-Extensions"] = offers
    config = upstream.config
    where = config.path
    request[UPSTREAM_LABEL] = where
    try:
        async with asyncio.timeout(config.connect_timeout + config.timeout):
            response = await upstream.client.request(
                "GET", upstream_ws_url(upstream, request), headers=headers, read_until_eof=False, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout))
    except TimeoutError:
        raise UpstreamTimeout(f"The application at {where} did not answer the WebSocket handshake in time.") from None
    except aiohttp.ClientError as exc:
        log.warning("upstream %s failed: %s", config.url, type(exc).__name__)
        raise UpstreamError(f"The application at {where} could not be reached.") from None
    try:
        protocol, deflate = _accepted(response, key, protocols, offers is not None)
        answer = response.headers.get("Sec-WebSocket-Extensions") if deflate is not None else None
        return AppSocket(_take_over(response), protocol, answer, deflate)
    except ValueError as exc:
        response.close()
        log.warning("upstream %s refused the websocket: %s", config.url, exc)
        raise UpstreamError(f"The application at {where} refused the WebSocket connection.") from None
    except BaseException:
        response.close()
        raise


def _accepted(response: aiohttp.ClientResponse, key: str, protocols: tuple[str, ...],
              offered: bool) -> tuple[str | None, Deflate | None]:
    """The subprotocol and compression the app's answer agreed to; ValueError when it is no WebSocket
    handshake's answer to ours (RFC 6455 §4.1: 101, Upgrade, Connection, the key's Sec-WebSocket-Accept)."""
    headers = response.headers
    if response.status != 101:
        raise ValueError(f"{response.status} {response.reason}")
    expected = base64.b64encode(hashlib.sha1(key.encode() + WS_KEY).digest()).decode()
    connection = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection \
            or headers.get("Sec-WebSocket-Accept", "") != expected:
        raise ValueError("no valid WebSocket answer")
    # RFC 6455 §4.1: a subprotocol the client did not ask for fails the connection (the client would refuse
    # the answer; relaying it would give the client a socket speaking a protocol it never agreed to).
    chosen = headers.get("Sec-WebSocket-Protocol", "").strip()
    if chosen and chosen not in protocols:
        raise ValueError(f"a subprotocol the client did not offer: {chosen!r}")
    return chosen or None, deflate_answer(headers.get("Sec-WebSocket-Extensions"), offered)


def _take_over(response: aiohttp.ClientResponse) -> AppSide:
    """Take the upgraded connection from aiohttp's client: the connector forgets it (it is never pooled
    again; the relay closes it), its transport reads into an ``AppSide``, and the response with its head
    and the request's headers as sent goes. Frames the app sent right after its 101 (aiohttp's protocol
    kept them as its ``_tail``) are the side's first bytes (``AppSide.start``). aiohttp has no public way
    to any of this; these are its 3.14 attributes."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    transport = protocol.transport if protocol is not None else None
    if connection is None or protocol is None or transport is None or transport.is_closing():
        raise UpstreamError("The application closed the WebSocket connection at once.")
    connection._connector._release_acquired(connection._key, protocol)
    connection._protocol = None
    response._connection = None
    response.close()
    early, protocol._tail = protocol._tail, b""
    side = AppSide(transport)
    transport.set_protocol(side)
    if protocol._reading_paused or protocol._buffer_paused:
        side.resume_reading()
    side.first_bytes = bytes(early)
    return side


# What the app may send before the relay is set (after its 101, before the client's has gone out).
EARLY_LIMIT = 64 * 1024


class AppSide(Side, asyncio.Protocol):
    """The connection to the app, as a relay's side: the proxy is the client here, so what the app sends
    must not be masked (RFC 6455 §5.1), and a close frame of the proxy's own is."""

    __slots__ = ("first_bytes", "lost_early", "transport")
    masked = False

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__("upstream")
        self.transport: asyncio.Transport | None = transport
        self.first_bytes = b""
        self.lost_early = False

    def start(self) -> None:
        """The relay is set: what came before it (bytes, or the app hanging up) is relayed now."""
        early, self.first_bytes = self.first_bytes, b""
        _call(self.transport, "resume_reading")
        if early:
            self.feed_data(early)
        if self.lost_early:
            self.feed_eof()

    def data_received(self, data: bytes) -> None:
        if self.relay is None:
            # The 101 is still going out to the client (its cookie hook may wait for the store): kept for
            # ``start``, and reading paused beyond EARLY_LIMIT so the app cannot make us hold more.
            self.first_bytes += data
            if len(self.first_bytes) > EARLY_LIMIT:
                _call(self.transport, "pause_reading")
            return
        self.feed_data(data)

    def eof_received(self) -> bool | None:
        return None                       # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if self.relay is None:
            self.lost_early = True            # told to the relay by ``start``
            return
        self.feed_eof()

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.peer(self).pause_reading()

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.peer(self).resume_reading()

    def write(self, data: bytes | bytearray) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_reading(self) -> None:
        _call(self.transport, "pause_reading")

    def resume_reading(self) -> None:
        _call(self.transport, "resume_reading")

    def disconnect(self, abort: bool = False) -> None:
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


def _call(transport: Any, method: str) -> None:
    """Pause or resume reading, where the transport still can (a closing one cannot)."""
    if transport is not None and not transport.is_closing():
        try:
            getattr(transport, method)()
        except (AttributeError, NotImplementedError, RuntimeError):
            pass
