"""The app's side of a WebSocket (RFC 6455): opening the upstream connection and relaying frames with the app.

``proxy/websocket.py`` owns the client's side: it authenticates the upgrade, checks its ``Origin``,
counts the session's sockets and ends them with the session. Once a handshake has passed all that, it
calls ``connect`` here, and only once the app has accepted does it answer the client's upgrade, with
the subprotocol the app chose. A refusal or an unreachable app is a 502 the client sees (504 when the
app does not answer in time), never a socket that opens and dies at once.

The upstream handshake carries the HTTP header policy (``Forwarder.request_headers``: Bearer token
and identity headers set, spoofed ones stripped) minus the handshake fields aiohttp sets itself
(``HANDSHAKE_FIELDS``). The app is offered the client's subprotocols, in the client's order.
Compression (permessage-deflate, RFC 7692) is offered to the app only when the client offered it,
and accepted from the client only when the app accepted it. Accepting it from the client alone made
the proxy the inflating end: 160 KiB on the client's wire reached the app as 160 MiB. Each hop still
agrees its own parameters.

Frames are relayed as they come, each way in its own task (``pumps``): text and binary unchanged
(text is not even decoded), ping and pong passed through — autoping is off on both ends, so the app
answers a client's ping and the pong proves the whole path alive; the proxy sends no pings of its
own — and a close frame's code and reason go to the other side, if it is one an endpoint may send
(``relayable_code``). A message is held in memory once, at most ``limits.websocket_max_message``
bytes after decompression; a bigger one ends the socket (1009).
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..context import CONFIG
from ..errors import UpstreamError, UpstreamTimeout
from ..model import Session
from ..paths import normalized_path
from .forward import FORWARDER, UPSTREAM_LABEL, Upstream

# The client side's logger: an operator reads a socket's whole story, both sides, under one name.
log = logging.getLogger("authproxy.websocket")

# Seconds to wait for the peer's close frame after sending ours (RFC 6455 §7.1.1), per side.
CLOSE_TIMEOUT = 5.0
# The window bits offered to the app when the client offered compression (RFC 7692 §7.1.2: 15 is zlib's default).
DEFLATE_WINDOW_BITS = 15
# Handshake fields aiohttp's client sets itself (RFC 6455 §4.1); the client's would clash with them.
# Sec-WebSocket-Protocol goes as ``protocols=``; extensions are negotiated per hop.
HANDSHAKE_FIELDS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                    "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept", "Connection", "Upgrade")
_WS_SCHEMES = {"http": "ws", "https": "wss"}
# What a handshake's request info keeps of the headers sent, once the socket is open (``_shed_handshake``).
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
# RFC 6455 §7.1.5: the close code of a connection that ended without a close frame (reported, never sent).
ABNORMAL_CLOSURE = 1006


class Close(NamedTuple):
    """A close frame to send: code and reason (at most 123 bytes, RFC 6455 §5.5); and, for the access
    log and the metrics, who ended the socket (``client``, ``upstream`` or ``proxy``) and whether that
    side went without a close frame of its own (``vanished``)."""

    code: int
    reason: str
    by: str = "proxy"
    vanished: bool = False

    @property
    def reported_code(self) -> int:
        """The code as an operator should read it: the one sent, or 1006 for a side that vanished (RFC 6455
        §7.1.5: a connection closed without a close frame has the close code 1006, which is never sent)."""
        return ABNORMAL_CLOSURE if self.vanished else self.code


# -- the handshake with the app ----------------------------------------------------------------------


def requested_protocols(request: web.Request) -> tuple[str, ...]:
    """The client's ``Sec-WebSocket-Protocol`` list, in its order of preference (RFC 6455 §4.1)."""
    return tuple(p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",")
                 if p.strip())


def offers_deflate(request: web.Request) -> bool:
    """Whether the client's handshake offers permessage-deflate (RFC 7692 §5)."""
    return any(offer.split(";", 1)[0].strip().lower() == "permessage-deflate"
               for value in request.headers.getall("Sec-WebSocket-Extensions", ()) for offer in value.split(","))


def upstream_ws_url(upstream: Upstream, request: web.Request) -> URL:
    """The upstream URL as ``Forwarder.forward`` builds it (normalised path, ``strip_prefix``, raw
    query), with ws/wss for http/https; a unix socket's ``http://localhost`` becomes ``ws://localhost``."""
    url = upstream.target(normalized_path(request), request.rel_url.raw_query_string)
    return url.with_scheme(_WS_SCHEMES.get(url.scheme, url.scheme))


async def connect(request: web.Request, upstream: Upstream,
                  session: Session | None) -> aiohttp.ClientWebSocketResponse[bool]:
    """Open the WebSocket to the app for the client's handshake ``request``; an UpstreamError (502) when
    the app refuses or cannot be reached, an UpstreamTimeout (504) when it does not answer in time."""
    headers = request.app[FORWARDER].request_headers(request, session, upstream)
    for name in HANDSHAKE_FIELDS:
        headers.popall(name, None)
    where = upstream.config.path
    request[UPSTREAM_LABEL] = where
    try:
        async with asyncio.timeout(upstream.config.connect_timeout + upstream.config.timeout):
            ws = await upstream.client.ws_connect(
                upstream_ws_url(upstream, request), headers=headers, protocols=requested_protocols(request),
                autoclose=False, autoping=False, max_msg_size=request.app[CONFIG].limits.websocket_max_message,
                decode_text=False, compress=DEFLATE_WINDOW_BITS if offers_deflate(request) else 0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT))
    except aiohttp.WSServerHandshakeError as exc:
        log.warning("upstream %s refused the websocket: %s %s", upstream.config.url, exc.status, exc.message)
        raise UpstreamError(f"The application at {where} refused the WebSocket connection.") from None
    except TimeoutError:
        raise UpstreamTimeout(f"The application at {where} did not answer the WebSocket handshake in time.") from None
    except aiohttp.ClientError as exc:
        log.warning("upstream %s failed: %s", upstream.config.url, type(exc).__name__)
        raise UpstreamError(f"The application at {where} could not be reached.") from None
    _shed_handshake(ws)
    return ws


def _shed_handshake(ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
    """Let go of what the upstream handshake left that a socket never reads again, though it keeps the
    handshake's response for its life (aiohttp closes the connection through it): the connection's HTTP
    response parser, which holds the 101's head (frames go through the WebSocket parser only), and the
    request's headers as sent (the access token and the cookies among them; aiohttp 3.14's client holds
    them elsewhere too). The parser and its head were about 1.6 KB of every idle socket (``bench/idle.py
    --trace``). aiohttp has no public way to either; both are its 3.14 attributes."""
    response = ws._response
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol._parser = None
    sent = response.request_info
    response._request_info = aiohttp.RequestInfo(sent.url, sent.method, _NO_HEADERS, sent.real_url)


# -- frames, both ways -------------------------------------------------------------------------------


def pumps(client_ws: web.WebSocketResponse[bool],
          upstream_ws: aiohttp.ClientWebSocketResponse[bool]) -> tuple[asyncio.Task[Close], asyncio.Task[Close]]:
    """Start relaying both ways, one task per direction; each ends with the close frame both sides then get."""
    return (asyncio.create_task(pump(client_ws, upstream_ws, "client")),
            asyncio.create_task(pump(upstream_ws, client_ws, "upstream")))


async def pump(source: web.WebSocketResponse[bool] | aiohttp.ClientWebSocketResponse[bool],
               sink: web.WebSocketResponse[bool] | aiohttp.ClientWebSocketResponse[bool], side: str) -> Close:
    """Relay ``source``'s messages to ``sink`` until ``source`` closes; the close frame both sides then get."""
    while True:
        msg = await source.receive()
        try:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                await sink.send_frame(msg.data, msg.type)
            elif msg.type is WSMsgType.PING:
                await sink.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await sink.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                return Close(relayable_code(msg.data, side), msg.extra or "", side)
            else:                                   # CLOSED, ERROR: gone without a close handshake
                return vanished(side)
        except (ConnectionError, aiohttp.ClientError):
            return vanished("upstream" if side == "client" else "client")


def relayable_code(code: int, side: str) -> int:
    """The close code to send on for one ``side`` received: only codes an endpoint may send.

    RFC 6455 §7.4.1–7.4.2: 1005, 1006 and 1015 must never be sent in a close frame, 1004 and
    1016–2999 are reserved, and nothing outside 1000–4999 is a code. aiohttp's reader lets 1006 and
    any code from 3000 up through. No code at all (read as 0) is a normal closure; any other code we
    may not send is told as that side vanishing (1001 from the client, 1014 from the upstream).
    """
    if code == 0:
        return WSCloseCode.OK
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return vanished(side).code


def vanished(side: str) -> Close:
    """What the other side is sent when ``side`` is gone without a close frame."""
    if side == "client":
        return Close(WSCloseCode.GOING_AWAY, "client went away", "client", vanished=True)
    return Close(WSCloseCode.BAD_GATEWAY, "upstream went away", "upstream", vanished=True)  # 1014: bad upstream
