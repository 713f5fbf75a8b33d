"""WebSocket frames relayed between the client's connection and the app's (RFC 6455 §5), with no task.

Once both handshakes are done, a socket is two connections and a ``FrameRelay``: each side's bytes are
cut into frames as they arrive (``Side.feed_data``, called from the connection's ``data_received``),
checked, and written to the other side as they came — masked as the client masked them, unmasked as
the app sent them, a message's fragments as fragments, ping and pong passed through. Nothing is decoded
or re-encoded; a side waiting for its next frame holds two small objects and its transport. aiohttp's
``WebSocketResponse`` and ``ClientWebSocketResponse`` held a reader, a writer, a message queue each,
and a task per direction parked on a future (about 20 KB of every idle socket, ``bench/idle.py --trace``).

A frame is held whole before it is passed on, so no side sees half a frame if the other fails it; a
frame or a message over ``limits.websocket_max_message`` bytes ends the socket with 1009, as does a
compressed message from the client that inflates beyond it (a few KiB on the wire can be gigabytes
inflated: the app behind us is spared them). What the app sends inflates at the client, which agreed
to it. A frame that breaks the protocol (unmasked from the client, masked from the app, an unknown
opcode, reserved bits, a fragmented or oversized control frame, a continuation out of place, a close
with a one-byte body or a reason that is no UTF-8) ends the socket with 1002 (1007 for the reason):
the offending side gets that code, the other is told that side went away.

Compression (permessage-deflate, RFC 7692) is agreed end to end: the client's offer goes to the app,
the app's answer to the client (``deflate_answer`` checks it), so both hops share one set of
parameters and compressed frames pass through as they are. The proxy keeps no compressor at all; it
inflates what the client sends only to measure it, with one decompressor per socket made at the
client's first compressed message (none at all when the client agreed to ``client_no_context_takeover``:
one per message, dropped after it). aiohttp's relay kept a compressor and a decompressor on each hop
(about 215 KiB for a socket that carried one message each way).

Backpressure: when one side's transport has more than its high-water mark waiting (``pause_writing``),
reading from the other side stops until it drains; the proxy holds at most one frame and a read's worth
of bytes per direction.

Closing (RFC 6455 §7): the first close frame, or the first side to go, or ``end`` (the session's end,
the proxy stopping) decides how the socket ends (``Close``). Each side still there is sent a close
frame with that code and reason; a side that had sent its own is then disconnected, the other is
awaited for its answer for up to ``CLOSE_TIMEOUT`` seconds, dropping any data it still sends. When both
connections are gone, ``on_done`` is called once.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Callable
from typing import NamedTuple

from aiohttp import WSCloseCode
from aiohttp._websocket.helpers import websocket_mask

# Seconds to wait for the peer's close frame after sending ours (RFC 6455 §7.1.1), per side.
CLOSE_TIMEOUT = 5.0
# RFC 6455 §7.1.5: the close code of a connection that ended without a close frame (reported, never sent).
ABNORMAL_CLOSURE = 1006
# Opcodes (RFC 6455 §5.2).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = frozenset((CONTINUATION, TEXT, BINARY))
_CONTROL = frozenset((CLOSE, PING, PONG))
# RFC 7692 §7.2.2: the bytes a compressed message's last deflate block ends with, removed by the sender.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
# Bytes inflated at a time while measuring a compressed message: what the check holds at once.
INFLATE_CHUNK = 64 * 1024
# The parameters of permessage-deflate (RFC 7692 §7.1); a window size may come with the two ``max`` ones.
_DEFLATE_PARAMS = frozenset(("server_no_context_takeover", "client_no_context_takeover",
                             "server_max_window_bits", "client_max_window_bits"))


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


def relayable_code(code: int, side: str) -> int:
    """The close code to send on for one ``side`` received: only codes an endpoint may send.

    RFC 6455 §7.4.1–7.4.2: 1005, 1006 and 1015 must never be sent in a close frame, 1004 and
    1016–2999 are reserved, and nothing outside 1000–4999 is a code. No code at all (read as 0) is a
    normal closure; any other code we may not send is told as that side vanishing (1001 from the
    client, 1014 from the upstream).
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


# -- permessage-deflate, agreed end to end -----------------------------------------------------------------


def deflate_offers(values: list[str]) -> str | None:
    """The client's permessage-deflate offers (RFC 7692 §5), to make to the app as they are; None if none.
    Other extensions are left out: the proxy would not know what their bits mean."""
    offers = [offer.strip() for value in values for offer in value.split(",")
              if offer.split(";", 1)[0].strip().lower() == "permessage-deflate"]
    return ", ".join(offers) or None


class Deflate(NamedTuple):
    """permessage-deflate as agreed: whether the client compresses each message afresh."""

    client_no_context_takeover: bool


def deflate_answer(value: str | None, offered: bool) -> Deflate | None:
    """The app's ``Sec-WebSocket-Extensions`` answer read as permessage-deflate's parameters; None when it
    agreed to no extension. ValueError when it is not one the client could have asked for: another
    extension, two of them, an unknown parameter, a window size outside 8–15 (RFC 7692 §7.1)."""
    if not value or not value.strip():
        return None
    if not offered or "," in value:
        raise ValueError("an extension that was not offered")
    name, *params = (part.strip() for part in value.split(";"))
    if name.lower() != "permessage-deflate":
        raise ValueError(f"extension {name!r}")
    seen: set[str] = set()
    for param in params:
        key, _, bits = (p.strip().strip('"') for p in param.partition("="))
        key = key.lower()
        if key not in _DEFLATE_PARAMS or key in seen:
            raise ValueError(f"parameter {key!r}")
        if bits and (not key.endswith("_max_window_bits") or not bits.isdigit() or not 8 <= int(bits) <= 15):
            raise ValueError(f"{key}={bits!r}")
        seen.add(key)
    return Deflate("client_no_context_takeover" in seen)


# -- the relay ---------------------------------------------------------------------------------------------


class Side:
    """One connection of a relayed socket: cuts its bytes into frames and hands them to the relay.

    Subclasses say how to write to the connection, pause and resume reading it, and disconnect it."""

    __slots__ = ("fragmented", "gone", "got_close", "inflated", "inflater", "inflating", "name", "pending",
                 "relay", "sent_close", "size")

    masked = False          # whether frames from this side must be masked (the client's) or must not be (the app's)

    def __init__(self, name: str) -> None:
        self.name = name
        self.relay: FrameRelay | None = None
        self.pending: bytearray | None = None     # the start of a frame not yet whole
        self.fragmented = False                   # a message's first frame came, not its last
        self.size = 0                             # bytes of the message under way (on the wire)
        self.inflating = False                    # the message under way is compressed, and measured
        self.inflated = 0                         # its bytes once inflated, so far
        self.inflater: zlib._Decompress | None = None
        self.got_close = self.sent_close = self.gone = False

    # What a connection does; the two kinds below.
    def write(self, data: bytes | bytearray) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def disconnect(self, abort: bool = False) -> None:
        raise NotImplementedError

    # What the connection calls.
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        """Bytes that came from this side. (The shape of aiohttp's payload parsers: nothing is left over.)"""
        relay = self.relay
        if relay is None or self.gone:
            return False, b""
        pending = self.pending
        if pending is not None:
            pending += data
            buf: bytes | bytearray = pending
        else:
            buf = data
        end, pos = len(buf), 0
        while end - pos >= 2:
            frame = _frame_bounds(buf, pos, end)
            if frame is None:
                break
            start, stop = frame
            problem = relay.check(self, buf[pos], buf[pos + 1], stop - start)
            if problem is not None:
                self.pending = None
                relay.fail(self, *problem)
                return False, b""
            if stop > end:
                break
            relay.frame(self, buf, pos, start, stop)
            pos = stop
            if self.gone or self.relay is None:
                return False, b""
        if pos == end:
            self.pending = None
        elif pending is not None:
            del pending[:pos]
        else:
            self.pending = bytearray(buf[pos:])
        return False, b""

    def feed_eof(self) -> None:
        """The connection is gone."""
        self.pending = self.inflater = None
        if not self.gone:
            self.gone = True
            if self.relay is not None:
                self.relay.lost(self)


def _frame_bounds(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """Where the frame at ``pos`` has its payload (after the header and any mask key), or None if its
    header has not all come."""
    length, start = buf[pos + 1] & 0x7F, pos + 2
    if length == 126:
        if end - start < 2:
            return None
        length, start = int.from_bytes(buf[start:start + 2], "big"), start + 2
    elif length == 127:
        if end - start < 8:
            return None
        length, start = int.from_bytes(buf[start:start + 8], "big"), start + 8
    if buf[pos + 1] & 0x80:
        start += 4
    return start, start + length


def _payload(buf: bytes | bytearray, pos: int, start: int, stop: int) -> bytearray:
    """A frame's payload, unmasked (RFC 6455 §5.3)."""
    payload = bytearray(buf[start:stop])
    if buf[pos + 1] & 0x80 and payload:
        websocket_mask(bytes(buf[start - 4:start]), payload)
    return payload


def close_frame(code: int, reason: str, masked: bool) -> bytes:
    """A close frame with ``code`` and as much of ``reason`` as fits (123 bytes, RFC 6455 §5.5)."""
    payload = bytearray(code.to_bytes(2, "big") + reason.encode("utf-8")[:123])
    if not masked:
        return bytes((0x80 | CLOSE, len(payload))) + payload
    key = os.urandom(4)
    websocket_mask(key, payload)
    return bytes((0x80 | CLOSE, 0x80 | len(payload))) + key + payload


class FrameRelay:
    """The two sides of one socket and how it ends (see the module docstring)."""

    __slots__ = ("_timer", "client", "deflate", "ending", "limit", "on_done", "upstream")

    def __init__(self, client: Side, upstream: Side, limit: int, deflate: Deflate | None,
                 on_done: Callable[[Close], object]) -> None:
        self.client, self.upstream, self.limit, self.deflate, self.on_done = client, upstream, limit, deflate, on_done
        self.ending: Close | None = None
        self._timer: asyncio.TimerHandle | None = None
        client.relay = upstream.relay = self

    def peer(self, side: Side) -> Side:
        return self.upstream if side is self.client else self.client

    def check(self, side: Side, b0: int, b1: int, length: int) -> tuple[int, str] | None:
        """Why a frame with this header may not pass (a close code and reason), or None. Read from its first
        bytes, before its payload has come: a frame too large is refused before it is held."""
        opcode, rsv = b0 & 0x0F, b0 & 0x70
        if bool(b1 & 0x80) is not side.masked:
            return WSCloseCode.PROTOCOL_ERROR, "masked frame" if b1 & 0x80 else "unmasked frame"
        if opcode in _CONTROL:
            if not b0 & 0x80 or length > 125 or rsv:
                return WSCloseCode.PROTOCOL_ERROR, "bad control frame"
            return None
        if opcode not in _DATA or rsv & 0x30:
            return WSCloseCode.PROTOCOL_ERROR, "unknown opcode or reserved bits"
        if (opcode == CONTINUATION) is not side.fragmented:
            return WSCloseCode.PROTOCOL_ERROR, "expected a continuation" if side.fragmented else \
                "unexpected continuation"
        if rsv and (self.deflate is None or opcode == CONTINUATION):
            return WSCloseCode.PROTOCOL_ERROR, "reserved bits"
        if length + (side.size if opcode == CONTINUATION else 0) > self.limit:
            return WSCloseCode.MESSAGE_TOO_BIG, "message too big"
        return None

    def frame(self, side: Side, buf: bytes | bytearray, pos: int, start: int, stop: int) -> None:
        """A whole frame from ``side`` that passed ``check``: relay it, or act on it."""
        opcode = buf[pos] & 0x0F
        if opcode == CLOSE:
            self._close_frame(side, _payload(buf, pos, start, stop))
            return
        if opcode in _DATA:
            if opcode != CONTINUATION:
                side.size, side.inflated = 0, 0
                side.inflating = bool(buf[pos] & 0x40) and side is self.client
            side.size += stop - start
            side.fragmented = not buf[pos] & 0x80
        if self.ending is not None:
            # Waiting for the close frame: nothing more is relayed, but the fragment state above stays true, so
            # a message the side finished or sent before it saw our close is not taken for a protocol error.
            return
        if (opcode in _DATA and side.inflating
                and not self._measure(side, _payload(buf, pos, start, stop), not side.fragmented)):
            self.fail(side, WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        self.peer(side).write(buf[pos:stop])

    def _measure(self, side: Side, payload: bytearray, last: bool) -> bool:
        """Inflate a compressed message's frame to count its bytes (nothing is kept); False: over the limit."""
        if side.inflater is None:
            side.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater, data = side.inflater, bytes(payload) + _DEFLATE_TAIL if last else bytes(payload)
        try:
            while data:
                side.inflated += len(inflater.decompress(data, INFLATE_CHUNK))
                if side.inflated > self.limit:
                    return False
                data = inflater.unconsumed_tail
                if inflater.eof:
                    # A block with BFINAL set ended the deflate stream: what follows is inflated and counted by a
                    # new decompressor, else it would land in unused_data, uncounted, and the limit be gone.
                    data = inflater.unused_data + data
                    inflater = side.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        except zlib.error:
            return False
        if last and self.deflate is not None and self.deflate.client_no_context_takeover:
            side.inflater = None
        return True

    def _close_frame(self, side: Side, payload: bytearray) -> None:
        side.got_close = True
        if len(payload) == 1:
            self.fail(side, WSCloseCode.PROTOCOL_ERROR, "bad close frame")
            return
        code = int.from_bytes(payload[:2], "big") if payload else 0
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(side, WSCloseCode.INVALID_TEXT, "close reason is no UTF-8")
            return
        if self.ending is None:
            self.end(Close(relayable_code(code, side.name), reason, side.name))
        else:
            side.disconnect()                     # the answer to ours: done with this side

    def fail(self, side: Side, code: int, reason: str) -> None:
        """``side`` broke the protocol or a limit: it gets ``code``, the other side is told it went away."""
        if self.ending is not None:
            side.disconnect(abort=True)
            return
        self.end(Close(code, reason, side.name), offender=side)

    def lost(self, side: Side) -> None:
        """A side's connection is gone."""
        if self.ending is None:
            self.end(vanished(side.name))
        self._maybe_done()

    def end(self, close: Close, offender: Side | None = None) -> None:
        """End the socket as ``close`` says; the first end wins. An ``offender`` (it broke the protocol or a
        limit) gets ``close`` and is disconnected at once; the other side is told it went away."""
        if self.ending is not None:
            return
        self.ending = close
        for side in (self.client, self.upstream):
            side.inflater = None              # ``pending`` stays: a half-read frame must still be read whole
            if side.gone:
                continue
            frame = close if offender is None or side is offender else vanished(offender.name)
            side.resume_reading()               # its close frame must be read even if the other side is slow
            side.write(close_frame(frame.code, frame.reason, masked=side is self.upstream))
            side.sent_close = True
            if side.got_close or side is offender:
                side.disconnect()               # it had closed (or broke the protocol): nothing more to wait for
        if not self._maybe_done():
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        """A side did not answer our close frame in time (RFC 6455 §7.1.1): cut it off."""
        self._timer = None
        for side in (self.client, self.upstream):
            if not side.gone:
                side.disconnect(abort=True)

    def _maybe_done(self) -> bool:
        if not (self.client.gone and self.upstream.gone) or self.ending is None:
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        on_done, self.on_done = self.on_done, _nothing
        self.client.relay = self.upstream.relay = None
        on_done(self.ending)
        return True


def _nothing(close: Close) -> None:
    return None
