"""The host coordinator's protocol: locks with leases, values with a ttl, retained messages, bounds.

The coordinator runs in the test's loop on a real unix socket in tmp_path; clients are raw
connections speaking the frames, so what is tested is the wire protocol itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy import coordinator as coord
from proxy.coordinator import Coordinator, encode, read_frame
from proxy.errors import FrameError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Raw:
    """One connection speaking the protocol frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self._ids = reader, writer, 0

    def tell(self, **message: object) -> None:
        self.writer.write(encode(message))

    async def ask(self, **message: object) -> dict:
        self._ids += 1
        self.tell(id=self._ids, **message)
        return await asyncio.wait_for(read_frame(self.reader), 5)

    async def next(self, timeout: float = 2.0) -> dict:
        return await asyncio.wait_for(read_frame(self.reader), timeout)

    async def closed_by_peer(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 2) == b""
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()


Connect = Callable[[], Awaitable[Raw]]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Coordinator, Connect, Clock]]:
    clock = Clock()
    coordinator = Coordinator(clock)
    path = str(tmp_path / "c.sock")
    server = await asyncio.start_unix_server(coordinator.serve_client, path=path)
    raws: list[Raw] = []

    async def connect() -> Raw:
        raw = Raw(*await asyncio.open_unix_connection(path))
        raws.append(raw)
        return raw

    yield coordinator, connect, clock
    for raw in raws:
        await raw.close()
    await asyncio.sleep(0.05)                 # let each connection's handler see its end
    server.close()
    await server.wait_closed()


async def test_a_lock_is_held_by_one_connection_until_released(served):
    _, connect, _ = served
    a, b = await connect(), await connect()
    assert await a.ask(op="lock", name="refresh:x", lease=30, wait=1) == {"id": 1, "ok": True}
    waiting = asyncio.ensure_future(b.ask(op="lock", name="refresh:x", lease=30, wait=5))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    c = await connect()
    assert (await c.ask(op="lock", name="refresh:other", lease=30, wait=1))["ok"] is True   # names are separate
    a.tell(op="unlock", name="refresh:x")
    assert (await waiting)["ok"] is True


async def test_a_disconnected_holder_frees_its_locks_at_once(served):
    _, connect, _ = served
    a, b = await connect(), await connect()
    assert (await a.ask(op="lock", name="n", lease=30, wait=1))["ok"]
    started = time.monotonic()
    waiting = asyncio.ensure_future(b.ask(op="lock", name="n", lease=30, wait=10))
    await asyncio.sleep(0.1)
    await a.close()
    assert (await waiting)["ok"] is True
    assert time.monotonic() - started < 5                      # far from the 30 s lease


async def test_a_holder_that_hangs_blocks_nobody_beyond_its_lease(tmp_path):
    coordinator = Coordinator()                                # the real clock: the lease runs out
    server = await asyncio.start_unix_server(coordinator.serve_client, path=str(tmp_path / "c.sock"))
    a = Raw(*await asyncio.open_unix_connection(str(tmp_path / "c.sock")))
    b = Raw(*await asyncio.open_unix_connection(str(tmp_path / "c.sock")))
    try:
        assert (await a.ask(op="lock", name="n", lease=0.3, wait=1))["ok"]
        started = time.monotonic()
        assert (await b.ask(op="lock", name="n", lease=5, wait=10))["ok"] is True
        assert 0.2 < time.monotonic() - started < 5
        a.tell(op="unlock", name="n")                              # too late: not a's any more
        assert (await a.ask(op="lock", name="n", lease=5, wait=0.3))["ok"] is False
    finally:
        await a.close()
        await b.close()
        await asyncio.sleep(0.05)
        server.close()


async def test_values_live_for_their_ttl_and_claims_are_granted_once(served):
    _, connect, clock = served
    a, b = await connect(), await connect()
    a.tell(op="put", key="refresh:k", value="1.sealed", ttl=30)
    assert (await b.ask(op="get", key="refresh:k"))["value"] == "1.sealed"
    clock.now += 31
    assert (await b.ask(op="get", key="refresh:k"))["value"] is None
    assert (await a.ask(op="claim", key="jti:1", ttl=60))["ok"] is True
    assert (await b.ask(op="claim", key="jti:1", ttl=60))["ok"] is False
    clock.now += 61
    assert (await b.ask(op="claim", key="jti:1", ttl=60))["ok"] is True


async def test_a_message_reaches_the_others_once_and_is_replayed_until_its_ttl(served):
    _, connect, clock = served
    a, b = await connect(), await connect()
    a.tell(op="hello")
    b.tell(op="hello")
    await b.ask(op="get", key="sync")                           # b's hello is in before the publish
    a.tell(op="publish", message="end-1", ttl=60)
    assert await b.next() == {"ev": "end-1"}
    a.tell(op="publish", message="end-1", ttl=60)               # the same end again: not sent twice
    assert (await a.ask(op="get", key="x"))["value"] is None    # and nothing came back to its sender
    late = await connect()
    late.tell(op="hello")
    assert await late.next() == {"ev": "end-1"}                  # a (re)started worker learns it
    clock.now += 61
    later = await connect()
    later.tell(op="hello")
    assert (await later.ask(op="get", key="x")) == {"id": 1, "value": None}   # expired: no replay came first
    with pytest.raises(TimeoutError):
        await b.next(timeout=0.2)


async def test_announced_messages_rebuild_a_restarted_coordinator(served):
    _, connect, _ = served
    survivor, other = await connect(), await connect()
    other.tell(op="hello")
    await other.ask(op="get", key="sync")
    survivor.tell(op="publish", message="end-7", ttl=100)      # what a worker does on connecting
    survivor.tell(op="hello")
    assert await other.next() == {"ev": "end-7"}                # news to the coordinator: passed on
    assert await survivor.next() == {"ev": "end-7"}             # the replay to the announcer itself


@pytest.mark.parametrize("frame", [
    (coord.MAX_FRAME + 1).to_bytes(4, "big"),                              # too large
    (5).to_bytes(4, "big") + b"nope!",                                     # not JSON
    (2).to_bytes(4, "big") + b"[]",                                        # not an object
    encode({"op": "steal"}),                                               # unknown op
    encode({"op": "put", "key": "k" * 300, "value": "v", "ttl": 1}),       # name too long
    encode({"op": "lock", "name": "n", "lease": -1, "wait": 1}),            # no such lease
    encode({"op": "put", "key": "k", "value": "v", "ttl": True}),          # a bool is not seconds
])
async def test_a_connection_that_breaks_the_protocol_is_closed_and_holds_nothing(served, frame):
    coordinator, connect, _ = served
    bad, good = await connect(), await connect()
    assert (await bad.ask(op="lock", name="held", lease=30, wait=1))["ok"]
    bad.writer.write(frame)
    assert await bad.closed_by_peer()
    assert (await good.ask(op="lock", name="held", lease=30, wait=2))["ok"] is True


async def test_entries_are_bounded(served, monkeypatch):
    coordinator, connect, _ = served
    monkeypatch.setattr(coord, "MAX_VALUES", 3)
    monkeypatch.setattr(coord, "MAX_RETAINED", 2)
    a = await connect()
    for i in range(10):
        a.tell(op="put", key=f"k{i}", value="v", ttl=60)
        a.tell(op="publish", message=f"m{i}", ttl=60)
    assert (await a.ask(op="get", key="k9"))["value"] == "v"
    assert (await a.ask(op="get", key="k0"))["value"] is None    # the oldest went first
    assert len(coordinator._values) == 3 and list(coordinator._retained) == ["m8", "m9"]


async def test_a_worker_that_stops_reading_is_dropped_not_buffered_for(served, monkeypatch):
    coordinator, connect, _ = served
    monkeypatch.setattr(coord, "MAX_BACKLOG", 64 * 1024)
    stuck, publisher = await connect(), await connect()
    stuck.tell(op="hello")
    await stuck.ask(op="get", key="sync")
    for i in range(2000):                                      # stuck never reads its socket
        publisher.tell(op="publish", message=f"end-{i}-" + "x" * 500, ttl=60)
    await publisher.ask(op="get", key="sync")
    await until_true(lambda: len(coordinator._clients) == 1)
    assert sum(c.writer.transport.get_write_buffer_size() for c in coordinator._clients) < 64 * 1024


async def until_true(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_frames_are_length_prefixed_json():
    frame = encode({"op": "get", "key": "k"})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert json.loads(frame[4:]) == {"op": "get", "key": "k"}
    with pytest.raises(FrameError):
        encode({"value": "x" * coord.MAX_FRAME})


def test_expired_values_and_messages_are_swept_whatever_their_order():
    """A value kept an hour ahead of one kept 30 s stopped ``_trim`` (it stops at the first live entry):
    expired refresh results stayed until MAX_VALUES newer ones came (the soak's coordinator grew)."""
    now = [0.0]
    c = Coordinator(lambda: now[0])
    c._put("long", "v", 3600.0)
    for i in range(100):
        c._put(f"short-{i}", "v", 30.0)
    c._retained["m-long"], c._retained["m-short"] = 3600.0, 30.0
    now[0] = 31.0 + coord.SWEEP_EVERY
    c._put("next", "v", now[0] + 30)
    assert list(c._values) == ["long", "next"] and list(c._retained) == ["m-long"]
