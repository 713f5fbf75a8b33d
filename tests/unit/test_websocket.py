"""WebSocket rules that need no network: recognising an upgrade, the Origin rule, the live-socket
registry, and when a socket's session ends."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from aiohttp import WSCloseCode
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.errors import ProviderUnavailable, SessionEnded, StoreUnavailable
from proxy.session import Identity, Session
from proxy.ending import Reason, SessionEnd
from proxy.websocket import (SESSION_ENDED, Close, LiveSocket, SessionTimer, SocketRegistry, is_websocket_upgrade,
                             normalize_origin, origin_allowed, watch_session)
from tests.unit.conftest import make_config

UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket")]


def request(method: str = "GET", headers: list[tuple[str, str]] | None = None, path: str = "/ws"):
    return make_mocked_request(method, path, headers=CIMultiDict(headers or []))


# -- is_websocket_upgrade ---------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    UPGRADE,
    [("Connection", "keep-alive, Upgrade"), ("Upgrade", "WebSocket")],         # Firefox's Connection
    [("connection", "UPGRADE"), ("upgrade", "websocket")],
    [("Connection", "keep-alive"), ("Connection", "upgrade"), ("Upgrade", "websocket")],
])
def test_upgrade_recognised_case_insensitively(headers):
    assert is_websocket_upgrade(request(headers=headers))


@pytest.mark.parametrize("method, headers", [
    ("POST", UPGRADE),
    ("GET", [("Upgrade", "websocket")]),                                         # no Connection: upgrade
    ("GET", [("Connection", "Upgrade")]),
    ("GET", [("Connection", "Upgrade"), ("Upgrade", "h2c")]),
    ("GET", [("Connection", "keep-alive"), ("Upgrade", "websocket")]),
    ("GET", [("Connection", "upgraded"), ("Upgrade", "websockets")]),            # tokens, not substrings
    ("GET", []),
])
def test_other_requests_are_no_upgrade(method, headers):
    assert not is_websocket_upgrade(request(method, headers))


# -- the Origin rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("https://App.Example.com", "https://app.example.com"),
    ("https://app.example.com:443", "https://app.example.com"),
    ("http://app.example.com:80/", "http://app.example.com"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("null", None),
    ("file://", None),
    ("https://app.example.com/path", None),
    ("https://user@app.example.com", None),
    ("https://app.example.com:99999", None),
    ("https://app.example.com.evil:x", None),
    ("", None),
])
def test_normalize_origin(value, expected):
    assert normalize_origin(value) == expected


def allowed(headers: list[tuple[str, str]], **sections) -> bool:
    return origin_allowed(CIMultiDict(headers), make_config(**sections))


def test_the_public_origin_is_allowed_in_any_spelling():
    for origin in ("https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "https://app.example.com:443"):
        assert allowed([("Origin", origin)])


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://app.example.com", "https://app.example.com:8443",
    "https://app.example.com.evil.example", "https://sub.app.example.com", "null", "garbage",
])
def test_other_origins_are_refused(origin):
    assert not allowed([("Origin", origin)])


def test_listed_origins_are_allowed_too():
    sections = {"websocket_origins": ["https://Admin.Example.com:443", "http://localhost:3000"]}
    assert allowed([("Origin", "https://admin.example.com")], **sections)
    assert allowed([("Origin", "http://localhost:3000")], **sections)
    assert not allowed([("Origin", "http://localhost:3001")], **sections)


def test_no_origin_means_no_browser_and_is_allowed_unless_it_looks_like_a_browser():
    assert allowed([("Cookie", "_authproxy=x")])
    assert not allowed([("Sec-Fetch-Mode", "websocket")])
    assert not allowed([("Sec-Fetch-Site", "cross-site")])


def test_two_origins_are_refused():
    assert not allowed([("Origin", "https://app.example.com"), ("Origin", "https://evil.example")])


# -- the registry --------------------------------------------------------------------------------------


async def test_registry_ends_one_sessions_sockets_and_forgets_them():
    registry = SocketRegistry()
    a1, a2, b, legacy = LiveSocket("a"), LiveSocket("a"), LiveSocket("b"), LiveSocket("")
    for live in (a1, a2, b, legacy):
        registry.add(live)
    assert registry.session_ended(SessionEnd(Reason.SIGN_OUT, time.time(), 60, session_id="a")) == 2
    assert a1.ended.result() == a2.ended.result() == Close(SESSION_ENDED, "signed out")
    assert not b.ended.done()
    assert registry.session_ended(SessionEnd(Reason.SIGN_OUT, time.time(), 60, session_id="")) == 0
    assert not legacy.ended.done()
    for live in (a1, a2, b):
        registry.discard(live)
    assert len(registry) == 1 and registry._by_session == {"": {legacy}}
    assert registry.end_all(WSCloseCode.GOING_AWAY, "bye") == 1 and legacy.ended.result().code == 1001


async def test_a_socket_registered_after_the_registry_ended_all_is_ended_at_once():
    """The soak (issue 19): a WebSocket whose handshake was under way when a SIGHUP reload ended every socket
    of the old app registered a moment later, was never ended, and hung (no relay, no close) for as long as
    the client waited. Once a registry has ended all, whatever it is given ends the same way."""
    registry = SocketRegistry()
    before = LiveSocket("a")
    registry.add(before)
    assert registry.end_all(WSCloseCode.GOING_AWAY, "proxy shutting down") == 1
    late = LiveSocket("b")
    registry.add(late)
    assert late.ended.result() == before.ended.result() == Close(WSCloseCode.GOING_AWAY, "proxy shutting down")


async def test_first_end_wins():
    live = LiveSocket("a")
    live.end(SESSION_ENDED, "signed out")
    live.end(WSCloseCode.GOING_AWAY, "later")
    assert live.ended.result() == Close(SESSION_ENDED, "signed out")


async def test_registry_honours_ends_by_id_sid_and_sub():
    now = time.time()

    def live(sid: str, sub: str, created: float, id_: str) -> LiveSocket:
        return LiveSocket(id_, Session(identity=Identity(sub=sub), access_token="AT", created_at=created, sid=sid,
                                       id=id_))
    a, b, c, later, legacy = (live("s1", "alice", now - 9, "a"), live("s2", "alice", now - 9, "b"),
                              live("s3", "bob", now - 9, "c"), live("s4", "alice", now + 9, "d"),
                              live("s5", "carol", now - 9, ""))
    registry = SocketRegistry()
    for one in (a, b, c, later, legacy):
        registry.add(one)
    assert registry.session_ended(SessionEnd(Reason.SIGN_OUT, now, 60, session_id="a")) == 1
    assert a.ended.result() == Close(SESSION_ENDED, "signed out") and not b.ended.done()
    assert registry.session_ended(SessionEnd(Reason.BACKCHANNEL, now, 60, sid="s3")) == 1
    assert c.ended.result() == Close(SESSION_ENDED, "signed out at the provider")
    # A user-wide end reaches the sessions signed in before it, not a later sign-in.
    assert registry.session_ended(SessionEnd(Reason.BACKCHANNEL, now, 60, sub="alice")) == 2      # a again, b
    assert b.ended.done() and not later.ended.done() and not legacy.ended.done()


# -- when a live socket's session ends ----------------------------------------------------------------


class FakeRefresher:
    def __init__(self, *results) -> None:
        self.results = list(results)
        self.calls = 0

    async def ensure_fresh(self, session: Session, *, remember_for: float = 0.0) -> Session:
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def session(expires_in: float | None, refresh_token: str | None = "RT") -> Session:
    now = time.time()
    return Session(identity=Identity(sub="alice"), access_token="AT", created_at=now,
                   expires_at=None if expires_in is None else now + expires_in, refresh_token=refresh_token, id="s1")


async def watch(s: Session, refresher: FakeRefresher, hard_end_in: float = 60.0,
                limit: float = 2.0) -> tuple[Close, float]:
    live = LiveSocket(s.id)
    started = time.monotonic()
    async with asyncio.timeout(limit):
        await watch_session(s, live, refresher, time.time, time.time() + hard_end_in)  # type: ignore[arg-type]
    return live.ended.result(), time.monotonic() - started


@pytest.mark.parametrize(("failure", "expected"), [
    (SessionEnded("invalid_grant"), Close(SESSION_ENDED, "session expired")),
    # Soak defect 6 (issue 19): the provider down at expiry closed with 4401 ("sign in again") though the
    # session lives; 1013 ("try again later") tells the client the truth.
    (ProviderUnavailable("refresh", "down"), Close(1013, "session not renewed: try again later"))])
async def test_a_refresh_that_fails_at_expiry_ends_the_socket(failure, expected):
    refresher = FakeRefresher(failure)
    close, elapsed = await watch(session(0.2), refresher)
    assert close == expected
    assert 0.2 <= elapsed < 1.0 and refresher.calls == 1


async def test_a_store_outage_at_expiry_ends_only_the_socket_not_the_session():
    """The soak (issue 19): Redis down while a WebSocket's token expired closed it with 1011 "internal error"
    and a traceback; it is the provider's absence again: this socket ends, the session does not."""
    live = LiveSocket("s1")
    refresher = FakeRefresher(StoreUnavailable("Redis could not be reached (ConnectionError)."))
    async with asyncio.timeout(2.0):
        reason = await watch_session(session(0.1), live, refresher, time.time, time.time() + 60)  # type: ignore[arg-type]
    assert reason is None                                   # None: no end of the session is recorded
    assert live.ended.result() == Close(1013, "session not renewed: try again later") and refresher.calls == 1


async def test_without_a_refresh_token_the_socket_ends_at_expiry():
    refresher = FakeRefresher()
    close, elapsed = await watch(session(0.2, refresh_token=None), refresher)
    assert close.code == SESSION_ENDED and 0.2 <= elapsed < 1.0 and refresher.calls == 0


async def test_a_refresh_that_works_reschedules_until_the_hard_end():
    s = session(0.2)
    refreshed = [replace(s, expires_at=s.expires_at + 0.2 * i) for i in (1, 2, 3, 4, 5)]
    refresher = FakeRefresher(*refreshed)
    close, elapsed = await watch(s, refresher, hard_end_in=0.7)
    assert close == Close(SESSION_ENDED, "session expired")
    assert 0.7 <= elapsed < 1.2 and refresher.calls == 3       # at 0.2, 0.4 and 0.6 s


async def test_a_refresh_answer_that_is_already_expired_ends_instead_of_looping():
    s = session(0.1)
    refresher = FakeRefresher(replace(s, expires_at=time.time() - 1))
    close, _ = await watch(s, refresher)
    assert close.code == SESSION_ENDED and refresher.calls == 1


async def test_a_token_without_expiry_lives_until_the_hard_end():
    close, elapsed = await watch(session(None), FakeRefresher(), hard_end_in=0.2)
    assert close.code == SESSION_ENDED and 0.2 <= elapsed < 1.0


def test_a_page_on_an_allowed_host_may_open_a_socket_to_that_same_host_only():
    hosts = {"cookie": {"domain": "example.com"}, "allowed_hosts": ["wiki.example.com", ".apps.example.com"]}
    assert allowed([("Origin", "https://wiki.example.com"), ("Host", "wiki.example.com")], **hosts)
    assert allowed([("Origin", "https://x.apps.example.com"), ("Host", "x.apps.example.com")], **hosts)
    # Another allowed host's page, a foreign host, a downgrade, a host that is not allowed: refused.
    assert not allowed([("Origin", "https://wiki.example.com"), ("Host", "x.apps.example.com")], **hosts)
    assert not allowed([("Origin", "https://evil.example"), ("Host", "evil.example")], **hosts)
    assert not allowed([("Origin", "http://wiki.example.com"), ("Host", "wiki.example.com")], **hosts)
    assert not allowed([("Origin", "https://other.example.com"), ("Host", "other.example.com")], **hosts)
    assert not allowed([("Origin", "https://wiki.example.com"), ("Host", "wiki.example.com")])   # none allowed


def test_every_reason_a_session_ends_for_has_a_close_reason():
    """A socket of a session ended for a reason without one would fail to close (KeyError in let_go)."""
    from proxy.websocket import CLOSE_REASONS

    assert set(CLOSE_REASONS) == set(Reason)
    assert CLOSE_REASONS[Reason.STEP_UP] == "signed in again"
    assert all(len(text.encode()) <= 123 for text in CLOSE_REASONS.values())      # RFC 6455 §5.5: a control frame


# -- the session timer: one handle per socket, rescheduled by a refresh, gone when the socket closes ------


def timer_handles(loop: asyncio.AbstractEventLoop) -> list[asyncio.Handle]:
    """The SessionTimer callbacks the loop (asyncio's own) still holds, cancelled ones left out."""
    pending = [*loop._scheduled, *loop._ready]  # type: ignore[attr-defined]
    return [h for h in pending
            if not h.cancelled() and isinstance(getattr(h._callback, "__self__", None), SessionTimer)]


async def test_a_refresh_moves_the_timer_to_the_new_expiry():
    loop = asyncio.get_running_loop()
    s = session(0.1)
    refresher = FakeRefresher(replace(s, expires_at=time.time() + 60))
    live, ends = LiveSocket("s1"), []
    timer = SessionTimer(s, live, refresher, time.time, time.time() + 3600, ends.append)
    timer.start()
    await asyncio.sleep(0)
    assert timer.wakes_at is not None and timer.wakes_at < loop.time() + 1       # the first expiry
    await wait_until(lambda: refresher.calls == 1 and timer.wakes_at is not None)
    assert loop.time() + 58 < timer.wakes_at < loop.time() + 61                  # the refreshed one
    assert not live.ended.done() and ends == [] and len(timer_handles(loop)) == 1
    assert timer.cancel() is None and not timer.scheduled and timer_handles(loop) == []


async def test_5000_closed_sockets_leave_no_timer_and_no_task():
    """Every socket's timer is cancelled when the socket closes (``_relay``), waiting or refreshing."""
    loop = asyncio.get_running_loop()
    stalled = asyncio.Event()

    class StalledRefresher:
        async def ensure_fresh(self, session: Session, *, remember_for: float = 0.0) -> Session:
            await stalled.wait()
            raise AssertionError("never answers")

    timers = []
    for i in range(5000):
        s = session(-1 if i % 10 == 0 else 30 + i % 600)          # one in ten refreshing when it closes
        timer = SessionTimer(s, LiveSocket("s1"), StalledRefresher(), time.time, time.time() + 3600,  # type: ignore[arg-type]
                             lambda why: None)
        timer.start()
        timers.append(timer)
    await asyncio.sleep(0.01)
    assert len(timer_handles(loop)) == 4500 and all(t.scheduled for t in timers)
    refreshing = [task for t in timers if (task := t.cancel()) is not None]
    assert len(refreshing) == 500
    await asyncio.gather(*refreshing, return_exceptions=True)
    assert timer_handles(loop) == [] and not any(t.scheduled for t in timers)
    assert all(task.cancelled() for task in refreshing)
    assert not [t for t in asyncio.all_tasks() if "SessionTimer" in t.get_coro().__qualname__]


async def wait_until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
