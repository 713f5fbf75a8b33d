"""The session-end event: its wire form, what it covers, and SessionEnds' order of effects."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import pytest

from proxy.ending import Fanout, LocalFanout, Reason, SessionEnd, SessionEnds
from proxy.errors import CookieError, StoreUnavailable
from proxy.model import Identity
from proxy.store import MemoryDenylist
from tests.unit.conftest import NOW, make_session

PROXY = Path(__file__).resolve().parents[2] / "proxy"


def end(**changes) -> SessionEnd:
    base = dict(reason=Reason.SIGN_OUT, at=NOW, ttl=3600.0, session_id="s1")
    base.update(changes)
    return SessionEnd(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("one", [end(), end(session_id=None, sid="op-sid", reason=Reason.BACKCHANNEL),
                                 end(session_id=None, sub="alice", reason=Reason.BACKCHANNEL),
                                 end(reason=Reason.COOKIE_LIMIT, sid="x", sub="y"),
                                 end(reason=Reason.STEP_UP)])
def test_round_trip(one):
    raw = one.to_bytes()
    assert SessionEnd.from_bytes(raw) == one
    assert b" " not in raw and len(raw) < 120


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b"null", b'{"r":"sign_out","at":1,"ttl":1}',                       # names nothing
    b'{"r":"nope","at":1,"ttl":1,"id":"a"}', b'{"r":1,"at":1,"ttl":1,"id":"a"}',
    b'{"r":"sign_out","at":"1","ttl":1,"id":"a"}', b'{"r":"sign_out","at":1,"ttl":0,"id":"a"}',
    b'{"r":"sign_out","at":1,"ttl":-5,"id":"a"}', b'{"r":"sign_out","at":true,"ttl":1,"id":"a"}',
    b'{"r":"sign_out","at":NaN,"ttl":1,"id":"a"}', b'{"r":"sign_out","at":1,"ttl":Infinity,"id":"a"}',
    b'{"r":"sign_out","at":1,"ttl":1,"id":""}', b'{"r":"sign_out","at":1,"ttl":1,"id":7}',
    b'{"r":"sign_out","at":1,"ttl":1,"id":"a","extra":1}', b'{"at":1,"ttl":1,"id":"a"}', b"\xff\xfe",
    # found in review: these escaped as RecursionError / OverflowError, or were read two ways
    b"[" * 100_000, b'{"r":"sign_out","at":1' + b"0" * 400 + b',"ttl":1,"id":"a"}',
    b'{"r":"sign_out","at":1,"ttl":1' + b"0" * 400 + b',"id":"a"}',
    b'{"r":"sign_out","at":1,"ttl":1,"id":"a","id":"b"}',
])
def test_from_bytes_is_strict(raw):
    with pytest.raises(ValueError):
        SessionEnd.from_bytes(raw)


def test_covers_by_id_sid_and_sub_before_the_end_only():
    s = make_session(id="s1", sid="op-sid")
    assert end().covers(s)
    assert not end(session_id="other").covers(s)
    assert end(session_id=None, sid="op-sid").covers(s)
    assert end(session_id=None, sub="alice").covers(s)
    assert not end(session_id=None, sub="alice").covers(make_session(id="s2", created_at=NOW + 1))  # later sign-in
    assert not end(session_id=None, sid="op-sid").covers(make_session(id="s2", sid="op-sid", created_at=NOW + 1))
    assert not end(session_id=None, sub="bob").covers(s)
    # A session sealed before ids existed has id "": no end by id reaches it (nor all such sessions).
    assert not end(session_id="").covers(make_session(id=""))


def test_memory_denylist_keeps_an_end_for_its_ttl_only():
    now = [NOW]
    local = MemoryDenylist(clock=lambda: now[0])
    local.note(end(ttl=10))
    assert local.covers(make_session(id="s1")) and not local.covers(make_session(id="s2"))
    now[0] += 11
    assert not local.covers(make_session(id="s1"))


class RecordingStore:
    def __init__(self, fail: bool = False) -> None:
        self.recorded: list[SessionEnd] = []
        self.fail = fail

    async def record_end(self, one: SessionEnd) -> int:
        if self.fail:
            raise StoreUnavailable("Redis could not be reached (ConnectionError).")
        self.recorded.append(one)
        return 1


class RecordingFanout:
    def __init__(self) -> None:
        self.published: list[SessionEnd] = []
        self.receivers: list = []

    async def publish(self, one: SessionEnd) -> None:
        self.published.append(one)

    def subscribe(self, receive) -> None:
        self.receivers.append(receive)

    async def close(self) -> None:
        return None


def ends(store: RecordingStore, fanout: Fanout) -> tuple[SessionEnds, list[SessionEnd]]:
    held: list[SessionEnd] = []
    result = SessionEnds(store, MemoryDenylist(clock=lambda: NOW), fanout, ttl=3600, clock=lambda: NOW)  # type: ignore[arg-type]
    result.hold(held.append)
    return result, held


async def test_end_applies_records_and_publishes():
    store, fanout = RecordingStore(), RecordingFanout()
    session_ends, held = ends(store, fanout)
    one = session_ends.new(Reason.SIGN_OUT, session_id="s1")
    assert one == SessionEnd(Reason.SIGN_OUT, NOW, 3600, session_id="s1")
    assert await session_ends.end(one) == 1
    assert store.recorded == fanout.published == held == [one]
    assert session_ends.ended(make_session(id="s1"))


async def test_an_end_from_another_process_is_applied_not_recorded_or_published_again():
    store, fanout = RecordingStore(), RecordingFanout()
    session_ends, held = ends(store, fanout)
    session_ends.apply(end(session_id=None, sub="alice"))
    assert held and store.recorded == [] and fanout.published == []
    assert session_ends.ended(make_session(id="any"))


async def test_a_store_that_is_down_still_ends_it_here_and_elsewhere_then_says_so():
    store, fanout = RecordingStore(fail=True), RecordingFanout()
    session_ends, held = ends(store, fanout)
    with pytest.raises(StoreUnavailable):
        await session_ends.end(end())
    assert held == fanout.published == [end()]
    assert session_ends.ended(make_session(id="s1"))


async def test_an_end_naming_nothing_does_nothing():
    store, fanout = RecordingStore(), RecordingFanout()
    session_ends, held = ends(store, fanout)
    assert await session_ends.end(session_ends.new(Reason.SIGN_OUT, session_id="")) == 0
    assert held == store.recorded == fanout.published == []


async def test_one_holder_failing_does_not_stop_the_others():
    session_ends, held = ends(RecordingStore(), RecordingFanout())

    def broken(_: SessionEnd) -> None:
        raise RuntimeError("bug")
    session_ends._holders.insert(0, broken)
    session_ends.apply(end())
    assert held == [end()]


async def test_local_fanout_tells_nobody():
    fanout = LocalFanout()
    received: list[SessionEnd] = []
    fanout.subscribe(received.append)
    await fanout.publish(end())
    await fanout.close()
    assert received == []


def test_session_was_ended_is_a_cookie_error():
    from proxy.errors import SessionWasEnded
    assert issubclass(SessionWasEnded, CookieError)


def _imports(module: str) -> set[str]:
    tree = ast.parse((PROXY / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add((node.module or "").split(".")[0])
    return names


def test_no_module_ends_sessions_its_own_way():
    """login.py does not reach into websocket.py; session.py and cookies.py do not import each other."""
    assert "websocket" not in _imports("login")
    assert "session" not in _imports("cookies")
    assert "cookies" not in _imports("model") and "session" not in _imports("model")


def test_ttl_is_finite_in_what_apps_build():
    one = SessionEnds(RecordingStore(), MemoryDenylist(), LocalFanout(), ttl=3600).new(Reason.EXPIRY,  # type: ignore[arg-type]
                                                                                       session_id="s")
    assert math.isfinite(one.ttl) and json.loads(one.to_bytes())["r"] == "expiry"


async def test_end_soon_finishes_the_end_even_if_its_caller_is_cancelled():
    import asyncio
    store, fanout = RecordingStore(), RecordingFanout()
    session_ends, held = ends(store, fanout)

    async def watcher() -> None:
        session_ends.end_soon(end())
        await asyncio.sleep(10)
    task = asyncio.create_task(watcher())
    await asyncio.sleep(0)
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.recorded == fanout.published == held == [end()]


async def test_a_fanout_that_fails_does_not_keep_the_end_from_the_store():
    class Broken(RecordingFanout):
        async def publish(self, one: SessionEnd) -> None:
            raise ConnectionError("coordinator gone")
    store = RecordingStore()
    session_ends, held = ends(store, Broken())
    assert await session_ends.end(end()) == 1
    assert store.recorded == held == [end()]


async def test_an_end_from_the_future_or_for_ever_is_taken_as_now_and_for_a_cookies_life():
    """A fan-out message is checked for shape only (``from_bytes``). One whose ``at`` lies ahead (a peer's
    clock, a bug, a forged message) ended every later sign-in of its user until then, and a huge ttl kept
    it in memory for ever: applied here, an end happened no later than now and lasts no longer than a cookie."""
    now = [NOW]
    store: Any = RecordingStore()
    session_ends = SessionEnds(store, MemoryDenylist(clock=lambda: now[0]), RecordingFanout(), ttl=3600,
                               clock=lambda: now[0])
    held: list[SessionEnd] = []
    session_ends.hold(held.append)
    session_ends.apply(SessionEnd.from_bytes(b'{"r":"backchannel_logout","at":1e15,"ttl":1e300,"sub":"alice"}'))
    assert held == [end(session_id=None, sub="alice", reason=Reason.BACKCHANNEL, at=NOW, ttl=3600)]
    assert session_ends.ended(make_session(id="before", created_at=NOW - 1))
    now[0] += 1
    assert not session_ends.ended(make_session(id="sign-in-after", created_at=NOW + 1))
    now[0] = NOW + 3601
    assert not session_ends.ended(make_session(id="before", created_at=NOW - 1))


def test_memory_denylist_forgets_expired_ends_so_it_does_not_grow():
    now = [NOW]
    local = MemoryDenylist(clock=lambda: now[0])
    for i in range(1000):
        local.note(end(session_id=f"s{i}", ttl=10))
    assert len(local) == 1000
    now[0] += 61                             # past every ttl and the sweep interval
    local.note(end(session_id="last", at=now[0], ttl=10))
    assert len(local) == 1


def test_memory_denylist_ends_by_sid_and_sub_only_what_existed_then():
    local = MemoryDenylist(clock=lambda: NOW)
    local.note(end(session_id=None, sid="op-sid"))
    local.note(end(session_id=None, sub="bob"))
    assert local.covers(make_session(id="a", sid="op-sid", created_at=NOW))
    assert not local.covers(make_session(id="b", sid="op-sid", created_at=NOW + 1))     # signed in again
    assert local.covers(make_session(id="c", identity=Identity(sub="bob"), created_at=NOW - 1))


class FlakyStore(RecordingStore):
    """Down for the first ``down`` calls, then up."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down
        self.calls = 0

    async def record_end(self, one: SessionEnd) -> int:
        self.calls += 1
        if self.calls <= self.down:
            raise StoreUnavailable("Redis could not be reached (ConnectionError).")
        return await super().record_end(one)


@pytest.fixture
def quick_retries(monkeypatch):
    import proxy.ending as module
    monkeypatch.setattr(module, "RETRY_FIRST", 0.001)
    monkeypatch.setattr(module, "RETRY_MAX", 0.004)


async def test_an_end_the_store_could_not_take_is_recorded_once_it_is_back(quick_retries):
    """Soak defect 4 (issue 19): the end used to be dropped when the store was down, so a copy of the
    cookie worked again once Redis was back."""
    from tests.support.timing import eventually
    store = FlakyStore(down=4)
    session_ends, held = ends(store, RecordingFanout())
    one = session_ends.new(Reason.SIGN_OUT, session_id="s1")
    with pytest.raises(StoreUnavailable):
        await session_ends.end(one)
    assert held == [one] and session_ends.unrecorded == 1
    with pytest.raises(StoreUnavailable):          # the same end asked again (a copy of the cookie): one retry
        await session_ends.end(one)
    assert session_ends.unrecorded == 1
    await eventually(lambda: session_ends.unrecorded == 0, timeout=5, interval=0.005)
    assert store.recorded == [one]


async def test_retrying_stops_when_the_end_no_longer_matters(quick_retries):
    import asyncio
    now = [NOW]
    store = RecordingStore(fail=True)
    session_ends = SessionEnds(store, MemoryDenylist(clock=lambda: now[0]), RecordingFanout(), ttl=10,  # type: ignore[arg-type]
                               clock=lambda: now[0])
    with pytest.raises(StoreUnavailable):
        await session_ends.end(session_ends.new(Reason.SIGN_OUT, session_id="s1"))
    await asyncio.sleep(0.02)
    assert session_ends.unrecorded == 1            # still trying
    now[0] += 11                                   # no cookie it covers can live any more
    for _ in range(200):
        if not session_ends.unrecorded:
            break
        await asyncio.sleep(0.005)
    assert session_ends.unrecorded == 0 and store.recorded == []


async def test_close_stops_the_retries(quick_retries):
    store = RecordingStore(fail=True)
    session_ends, _ = ends(store, RecordingFanout())
    with pytest.raises(StoreUnavailable):
        await session_ends.end(session_ends.new(Reason.SIGN_OUT, session_id="s1"))
    await session_ends.close()
    assert session_ends.unrecorded == 0
