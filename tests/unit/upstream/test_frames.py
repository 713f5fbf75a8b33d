"""The frame relay without a network: two recording sides, frames built by hand (RFC 6455 §5), what
passes, what ends the socket with which code, and that the relay leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import zlib

import pytest
from aiohttp import WSCloseCode
from aiohttp._websocket.helpers import websocket_mask

from proxy.upstream.frames import (BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, Close, Deflate, FrameRelay, Side,
                                   deflate_answer, deflate_offers)

LIMIT = 1 << 16


class FakeSide(Side):
    """Records what is written to it, whether reading is paused, and when it is disconnected."""

    __slots__ = ("aborted", "disconnected", "paused", "written")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.written: list[bytes] = []
        self.paused = False
        self.disconnected = self.aborted = False

    def write(self, data: bytes | bytearray) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def disconnect(self, abort: bool = False) -> None:
        self.disconnected, self.aborted = True, abort

    def lose(self) -> None:
        self.feed_eof()


class MaskedFakeSide(FakeSide):
    __slots__ = ()
    masked = True


def frame(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = False, rsv1: bool = False,
          length: int | None = None) -> bytes:
    """One frame as a peer sends it; ``length`` overrides the length field (for headers alone)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    body = bytearray(payload)
    websocket_mask(key, body)
    return head + key + bytes(body)


def close_payload(data: bytes) -> tuple[int, str]:
    """The code and reason of a close frame the relay wrote (masked or not)."""
    n = data[1] & 0x7F
    if data[1] & 0x80:
        body = bytearray(data[6:6 + n])
        websocket_mask(data[2:6], body)
    else:
        body = bytearray(data[2:2 + n])
    return int.from_bytes(body[:2], "big"), body[2:].decode()


class Pair:
    def __init__(self, deflate: Deflate | None = None, limit: int = LIMIT) -> None:
        self.client = MaskedFakeSide("client")
        self.app = FakeSide("upstream")
        self.done: list[Close] = []
        self.relay = FrameRelay(self.client, self.app, limit, deflate, self.done.append)

    def close_both(self) -> None:
        self.client.lose()
        self.app.lose()


async def test_frames_pass_as_they_came_fragments_and_control_frames_too():
    pair = Pair()
    sent = [frame(TEXT, b"he", fin=False, masked=True), frame(PING, b"p", masked=True),
            frame(CONTINUATION, b"llo", masked=True), frame(BINARY, b"\x00" * 300, masked=True)]
    pair.client.feed_data(b"".join(sent))
    assert pair.app.written == sent                       # masked as the client masked them, fragments kept
    back = [frame(TEXT, b"x" * 60000), frame(PONG, b"p")]
    blob = b"".join(back)
    for i in range(0, len(blob), 1000):                   # arriving in pieces
        pair.app.feed_data(blob[i:i + 1000])
    assert pair.client.written == back
    assert pair.client.pending is None and pair.app.pending is None


@pytest.mark.parametrize("data, code", [
    (frame(TEXT, b"x"), WSCloseCode.PROTOCOL_ERROR),                                       # unmasked from the client
    (frame(0x3, b"x", masked=True), WSCloseCode.PROTOCOL_ERROR),                           # unknown opcode
    (frame(TEXT, b"x", masked=True, rsv1=True), WSCloseCode.PROTOCOL_ERROR),               # no deflate agreed
    (frame(PING, b"x", fin=False, masked=True), WSCloseCode.PROTOCOL_ERROR),               # fragmented control
    (frame(PING, b"x" * 126, masked=True), WSCloseCode.PROTOCOL_ERROR),                    # control over 125
    (frame(CONTINUATION, b"x", masked=True), WSCloseCode.PROTOCOL_ERROR),                  # nothing to continue
    (frame(TEXT, b"a", fin=False, masked=True) + frame(TEXT, b"b", masked=True), WSCloseCode.PROTOCOL_ERROR),
    (frame(CLOSE, b"\x03", masked=True), WSCloseCode.PROTOCOL_ERROR),                      # a one-byte close
    (frame(CLOSE, b"\x03\xe8\xff", masked=True), WSCloseCode.INVALID_TEXT),                # reason no UTF-8
    (frame(BINARY, length=1 << 40, masked=True)[:14], WSCloseCode.MESSAGE_TOO_BIG),        # the header is enough
    (frame(TEXT, b"a" * 40000, fin=False, masked=True) + frame(CONTINUATION, b"a" * 40000, masked=True)[:20],
     WSCloseCode.MESSAGE_TOO_BIG),                                                          # fragments add up
], ids=["unmasked", "opcode", "rsv1", "fragmented-ping", "long-ping", "continuation", "no-continuation",
        "short-close", "reason-not-utf8", "terabyte", "fragments-add-up"])
async def test_a_hostile_client_is_failed_and_the_app_told_it_went_away(data, code):
    pair = Pair()
    pair.client.feed_data(data)
    assert close_payload(pair.client.written[-1])[0] == code
    assert pair.client.disconnected                            # failed: not waited for
    assert close_payload(pair.app.written[-1]) == (WSCloseCode.GOING_AWAY, "client went away")
    assert not pair.app.disconnected                           # the app answers our close first
    assert pair.relay.ending is not None and pair.relay.ending.code == code and pair.relay.ending.by == "client"
    assert pair.client.pending is None
    pair.close_both()
    assert [c.code for c in pair.done] == [code]


async def test_a_masked_frame_from_the_app_is_a_protocol_error():
    pair = Pair()
    pair.app.feed_data(frame(TEXT, b"x", masked=True))
    assert close_payload(pair.app.written[-1])[0] == WSCloseCode.PROTOCOL_ERROR
    assert close_payload(pair.client.written[-1]) == (WSCloseCode.BAD_GATEWAY, "upstream went away")


async def test_a_close_goes_on_with_its_code_and_the_closing_side_is_answered():
    pair = Pair()
    pair.client.feed_data(frame(CLOSE, (4001).to_bytes(2, "big") + "bye é".encode(), masked=True))
    assert close_payload(pair.app.written[-1]) == (4001, "bye é")
    assert pair.app.written[-1][1] & 0x80                   # the proxy's own frame to the app is masked
    assert close_payload(pair.client.written[-1]) == (4001, "bye é") and pair.client.disconnected
    pair.app.feed_data(frame(TEXT, b"late"))                # dropped: the socket is closing
    pair.app.feed_data(frame(CLOSE, (4001).to_bytes(2, "big")))
    assert pair.app.disconnected and len(pair.client.written) == 1
    pair.close_both()
    assert pair.done == [Close(4001, "bye é", "client")]


async def test_a_code_that_may_not_be_sent_is_never_relayed():
    pair = Pair()
    pair.app.feed_data(frame(CLOSE, (1006).to_bytes(2, "big") + b"why"))
    assert close_payload(pair.client.written[-1]) == (WSCloseCode.BAD_GATEWAY, "why")


async def test_a_vanished_side_and_an_unanswered_close_leave_nothing_behind(monkeypatch):
    monkeypatch.setattr("proxy.upstream.frames.CLOSE_TIMEOUT", 0.05)
    pair = Pair()
    pair.client.lose()                                      # the client vanished
    assert close_payload(pair.app.written[-1]) == (WSCloseCode.GOING_AWAY, "client went away")
    assert pair.done == []                                  # the app has not answered yet
    await asyncio.sleep(0.1)
    assert pair.app.aborted                                 # nor did it in time: cut off
    pair.app.lose()
    assert pair.done == [Close(WSCloseCode.GOING_AWAY, "client went away", "client", vanished=True)]
    assert pair.relay._timer is None and pair.client.relay is None and pair.app.relay is None


async def test_end_closes_both_sides_and_the_first_end_wins():
    pair = Pair()
    pair.relay.end(Close(4401, "signed out"))
    pair.relay.end(Close(1001, "later"))
    assert close_payload(pair.client.written[-1]) == (4401, "signed out")
    assert close_payload(pair.app.written[-1]) == (4401, "signed out")
    pair.client.feed_data(frame(CLOSE, (4401).to_bytes(2, "big"), masked=True))
    pair.app.feed_data(frame(CLOSE, (4401).to_bytes(2, "big")))
    assert pair.client.disconnected and pair.app.disconnected
    pair.close_both()
    assert pair.done == [Close(4401, "signed out")]


async def test_a_side_that_backs_up_pauses_reading_the_other_until_it_drains():
    from proxy.upstream.websocket import AppSide

    class Transport:
        def __init__(self) -> None:
            self.reading = True

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            self.reading = False

        def resume_reading(self) -> None:
            self.reading = True

    transport = Transport()
    app = AppSide(transport)                                # type: ignore[arg-type]
    client = MaskedFakeSide("client")
    FrameRelay(client, app, LIMIT, None, lambda close: None)
    app.pause_writing()                                     # the app reads slowly: stop reading the client
    assert client.paused
    app.resume_writing()
    assert not client.paused
    client.relay.peer(client).pause_reading()               # type: ignore[union-attr]
    assert not transport.reading


def compressed(message: bytes, compressor: zlib._Compress) -> bytes:
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


@pytest.mark.parametrize("no_takeover", [False, True])
async def test_a_compressed_message_is_measured_inflated_and_passed_as_it_came(no_takeover):
    pair = Pair(Deflate(client_no_context_takeover=no_takeover))
    compressor = zlib.compressobj(wbits=-15)
    for _ in range(3):                                      # context taken over between messages, or not
        if no_takeover:
            compressor = zlib.compressobj(wbits=-15)
        data = frame(TEXT, compressed(b"a" * LIMIT, compressor), masked=True, rsv1=True)
        pair.client.feed_data(data)
        assert pair.app.written[-1] == data                 # exactly the limit, inflated: it passes as it is
        assert (pair.client.inflater is None) is no_takeover
    pair.client.feed_data(frame(TEXT, compressed(b"a" * (LIMIT + 1), compressor), masked=True, rsv1=True))
    assert close_payload(pair.client.written[-1])[0] == WSCloseCode.MESSAGE_TOO_BIG
    assert close_payload(pair.app.written[-1]) == (WSCloseCode.GOING_AWAY, "client went away")


async def test_a_compressed_bomb_in_fragments_is_stopped_at_the_limit():
    pair = Pair(Deflate(False))
    bomb = compressed(b"\0" * (64 << 20), zlib.compressobj(wbits=-15))     # ~64 KiB, 64 MiB inflated
    half = len(bomb) // 2
    pair.client.feed_data(frame(BINARY, bomb[:half], fin=False, masked=True, rsv1=True))
    assert close_payload(pair.client.written[-1])[0] == WSCloseCode.MESSAGE_TOO_BIG
    assert all(w[0] & 0x0F == CLOSE for w in pair.app.written)               # no byte of it reached the app


async def test_what_the_app_compresses_passes_without_being_inflated():
    pair = Pair(Deflate(False))
    data = frame(TEXT, compressed(b"x" * (4 * LIMIT), zlib.compressobj(wbits=-15)), rsv1=True)
    pair.app.feed_data(data)
    assert pair.client.written == [data] and pair.app.inflater is None


def test_deflate_offers_and_answers():
    assert deflate_offers(["permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
                           "Permessage-Deflate"]) == "permessage-deflate; client_max_window_bits, Permessage-Deflate"
    assert deflate_offers(["x-webkit-deflate-frame"]) is None and deflate_offers([]) is None
    assert deflate_answer(None, True) is None and deflate_answer("", False) is None
    assert deflate_answer("permessage-deflate", True) == Deflate(False)
    assert deflate_answer("permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
                          True) == Deflate(True)
    for bad in ("x-webkit-deflate-frame", "permessage-deflate, permessage-deflate", "permessage-deflate; foo",
                "permessage-deflate; server_max_window_bits=16", "permessage-deflate; client_no_context_takeover=1",
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover"):
        with pytest.raises(ValueError):
            deflate_answer(bad, True)
    with pytest.raises(ValueError):
        deflate_answer("permessage-deflate", False)                      # never offered


def _deflated(data: bytes, final: bool = False) -> bytes:
    """A message's compressed payload as RFC 7692 §7.2.1 sends it (the sync flush's tail removed), or one
    ending in a block with BFINAL set."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    return out if final else out[:-4]


@pytest.mark.parametrize("no_takeover", [False, True])
async def test_a_final_deflate_block_does_not_switch_the_limit_off(no_takeover):
    """Review finding: after a block with BFINAL set, the inflater was at its stream's end and what followed
    went to its unused_data, counted as nothing: a 64 MiB bomb then passed a 64 KiB limit."""
    pair = Pair(Deflate(no_takeover))
    pair.client.feed_data(frame(TEXT, _deflated(b"hi", final=True), masked=True, rsv1=True))
    assert pair.relay.ending is None and len(pair.app.written) == 1
    bomb = _deflated(b"A" * (8 << 20))
    pair.client.feed_data(frame(BINARY, bomb, masked=True, rsv1=True))
    assert pair.relay.ending is not None and pair.relay.ending.code == WSCloseCode.MESSAGE_TOO_BIG
    assert len(pair.app.written) == 2 and close_payload(pair.app.written[-1])[0] == WSCloseCode.GOING_AWAY


async def test_a_bomb_after_a_final_block_in_the_same_message_is_counted():
    pair = Pair(Deflate(True))
    payload = _deflated(b"x", final=True) + _deflated(b"A" * (8 << 20))
    pair.client.feed_data(frame(BINARY, payload, masked=True, rsv1=True))
    assert pair.relay.ending is not None and pair.relay.ending.code == WSCloseCode.MESSAGE_TOO_BIG


async def test_an_end_while_a_frame_is_half_read_waits_for_the_clients_close():
    """Review finding: ``end`` dropped a half-read frame, so its rest was read as frame headers and the client,
    failed for it, was aborted before our close frame (4401) could reach it."""
    pair = Pair()
    big = frame(BINARY, b"\x88\x82" * 5000, masked=True)
    pair.client.feed_data(big[:5000])
    pair.relay.end(Close(4401, "signed out"))
    assert close_payload(pair.client.written[-1]) == (4401, "signed out")
    pair.client.feed_data(big[5000:] + frame(CLOSE, (1000).to_bytes(2, "big"), masked=True))
    assert pair.client.got_close and pair.client.disconnected and not pair.client.aborted
    assert len(pair.app.written) == 1                   # only our close: nothing after the end was relayed


async def test_a_message_finished_after_an_end_is_no_protocol_error():
    pair = Pair()
    pair.client.feed_data(frame(TEXT, b"he", fin=False, masked=True))
    pair.relay.end(Close(4401, "signed out"))
    pair.client.feed_data(frame(CONTINUATION, b"llo", masked=True) + frame(TEXT, b"next", masked=True)
                          + frame(CLOSE, (1000).to_bytes(2, "big"), masked=True))
    assert pair.client.got_close and not pair.client.aborted
    assert pair.relay.ending is not None and pair.relay.ending.code == 4401


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def __getattr__(self, name: str):
        if name in ("pause_reading", "resume_reading", "close", "abort"):
            return lambda: self.calls.append(name)
        raise AttributeError(name)


async def test_what_the_app_sends_before_the_relay_is_set_is_relayed_by_start():
    """Review finding: bytes the app sent after its 101, while the client's 101 was still going out (its cookie
    hook may wait for the store), were dropped, and a hang-up then never reached the relay."""
    from proxy.upstream.websocket import EARLY_LIMIT, AppSide
    transport = FakeTransport()
    app = AppSide(transport)                              # type: ignore[arg-type]
    greeting = frame(TEXT, b"hello")
    app.data_received(greeting[:3])
    app.data_received(greeting[3:])
    app.data_received(b"\x00" * EARLY_LIMIT)              # more than it may send early: reading paused
    assert "pause_reading" in transport.calls
    app.connection_lost(None)
    client = MaskedFakeSide("client")
    done: list[Close] = []
    relay = FrameRelay(client, app, LIMIT, None, done.append)
    app.start()
    assert client.written[0] == greeting
    assert relay.ending is not None                       # the hang-up (or the garbage after it) reached the relay


async def test_a_client_side_closed_gently_can_still_be_aborted():
    """Review finding: aiohttp's ``force_close`` forgets the handler's transport, so the abort after the close
    timeout reached nothing and a client that read nothing held its connection and socket for ever."""
    from proxy.websocket import ClientSide

    class Handler:
        def __init__(self) -> None:
            self.transport: FakeTransport | None = FakeTransport()

        def force_close(self) -> None:
            if self.transport is not None:
                self.transport.close()
            self.transport = None

    handler = Handler()
    transport = handler.transport
    assert transport is not None
    side = ClientSide(handler)                            # type: ignore[arg-type]
    side.disconnect()
    side.disconnect(abort=True)
    assert transport.calls == ["close", "abort"]
