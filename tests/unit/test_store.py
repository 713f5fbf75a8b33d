"""Tests for proxy.store: the in-memory denylist (with an injected clock) and the cookie store around it.

What every store must do is tests/contract's; this file pins what is particular to these two: when a
denylist entry is forgotten, that a ``sid``/``sub`` end spares later sign-ins, the sweep, and how the
cookie store consults its denylist on load, save and reload.
"""

from __future__ import annotations

import pytest

from proxy.cookies import CookieCodec
from proxy.crypto import Sealer
from proxy.ending import Reason, SessionEnd
from proxy.errors import CookieError, SessionWasEnded, StoreUnavailable
from proxy.model import Identity
from proxy.store import CookieStore, MemoryDenylist
from tests.unit.conftest import NOW, make_config, make_session


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def end(at: float = NOW, ttl: float = 100.0, **names: str) -> SessionEnd:
    return SessionEnd(Reason.SIGN_OUT, at, ttl, **names)


# -- MemoryDenylist ---------------------------------------------------------------------------------------


def test_an_end_by_id_covers_that_session_only() -> None:
    denylist = MemoryDenylist(Clock())
    denylist.note(end(session_id="s1"))
    assert denylist.covers(make_session(id="s1"))
    assert not denylist.covers(make_session(id="s2"))


def test_a_session_without_an_id_is_not_covered_by_an_id_end() -> None:
    """Sessions sealed before ids existed all have the id "": no end may name them all at once."""
    denylist = MemoryDenylist(Clock())
    denylist.note(end(session_id="s1"))
    assert not denylist.covers(make_session(id=""))


def test_an_end_by_sid_or_sub_spares_later_sign_ins() -> None:
    denylist = MemoryDenylist(Clock(NOW + 50))
    denylist.note(end(at=NOW, sid="sid-1"))
    denylist.note(end(at=NOW, sub="bob"))
    assert denylist.covers(make_session(sid="sid-1", created_at=NOW))          # existed then
    assert not denylist.covers(make_session(sid="sid-1", created_at=NOW + 1))  # signed in afterwards
    bob = Identity(sub="bob")
    assert denylist.covers(make_session(identity=bob, sid=None, created_at=NOW - 1))
    assert not denylist.covers(make_session(identity=bob, sid=None, created_at=NOW + 1))
    assert not denylist.covers(make_session(sid="sid-2", created_at=NOW - 1))   # alice, another sid


def test_entries_are_forgotten_after_their_ttl() -> None:
    clock = Clock()
    denylist = MemoryDenylist(clock)
    denylist.note(end(ttl=100, session_id="s1", sub="alice"))
    clock.now = NOW + 99.9
    assert denylist.covers(make_session(id="s1"))
    clock.now = NOW + 100
    assert not denylist.covers(make_session(id="s1"))
    assert not denylist.covers(make_session(id="other", created_at=NOW - 5))   # the sub entry is gone too


def test_a_later_end_by_the_same_name_widens_and_never_shortens() -> None:
    clock = Clock(NOW + 20)
    denylist = MemoryDenylist(clock)
    denylist.note(end(at=NOW + 10, ttl=1000, sub="alice"))
    denylist.note(end(at=NOW, ttl=10, sub="alice"))          # an earlier, shorter end arrives late
    assert denylist.covers(make_session(id="x", created_at=NOW + 5))           # the later time is kept
    clock.now = NOW + 500
    assert denylist.covers(make_session(id="x", created_at=NOW + 5))           # and the longer life


def test_expired_entries_are_swept_at_most_once_a_minute() -> None:
    clock = Clock()
    denylist = MemoryDenylist(clock)
    denylist.note(end(ttl=1, session_id="s1"))
    assert len(denylist) == 1
    clock.now = NOW + 30
    denylist.note(end(ttl=1000, session_id="s2"))
    assert len(denylist) == 2                    # s1 expired, but the last sweep was under a minute ago
    clock.now = NOW + 61
    denylist.note(end(ttl=1000, session_id="s3"))
    assert len(denylist) == 2                    # swept: s2 and s3 remain


async def test_a_logout_token_id_is_used_once_within_its_ttl() -> None:
    clock = Clock()
    denylist = MemoryDenylist(clock)
    assert await denylist.first_use("jti-1", 60)
    assert not await denylist.first_use("jti-1", 60)
    assert await denylist.first_use("jti-2", 60)
    clock.now = NOW + 60
    assert await denylist.first_use("jti-1", 60)         # forgotten once its ttl is over


async def test_a_jti_never_covers_a_session() -> None:
    denylist = MemoryDenylist(Clock())
    await denylist.first_use("s1", 60)
    assert not denylist.covers(make_session(id="s1")) and not await denylist.ended(make_session(id="s1"))


async def test_record_and_ended_are_note_and_covers() -> None:
    denylist = MemoryDenylist(Clock())
    assert not await denylist.ended(make_session(id="s1"))
    await denylist.record(end(session_id="s1"))
    assert await denylist.ended(make_session(id="s1"))
    assert await denylist.healthy()


# -- CookieStore ------------------------------------------------------------------------------------------


def cookie_store(clock: Clock, denylist: object | None = None) -> CookieStore:
    cfg = make_config(cookie={"expire": "1h"}).cookie
    return CookieStore(CookieCodec(cfg, Sealer(cfg.keys), clock=clock),
                       denylist if denylist is not None else MemoryDenylist(clock))  # type: ignore[arg-type]


async def test_the_cookie_store_saves_into_cookies_and_loads_them_back() -> None:
    clock = Clock()
    store = cookie_store(clock)
    session = make_session(id="s1")
    cookies = dict(await store.save(session, {}))
    assert list(cookies) == [store.codec.name] and store.owned_names({**cookies, "other": "x"}) == [store.codec.name]
    assert await store.load(cookies) == session
    assert await store.load({"other": "x"}) is None


async def test_an_ended_session_does_not_load_save_or_reload() -> None:
    clock = Clock()
    store = cookie_store(clock)
    session = make_session(id="s1")
    cookies = dict(await store.save(session, {}))
    assert await store.reload(session) == session
    assert await store.record_end(end(session_id="s1")) == 0     # a cookie store cannot count cookies
    with pytest.raises(SessionWasEnded):
        await store.load(cookies)
    with pytest.raises(SessionWasEnded):
        await store.save(session.with_tokens(access_token="AT-2"), cookies)
    assert await store.reload(session) is None
    assert issubclass(SessionWasEnded, CookieError)          # the request path treats it as a bad cookie


async def test_a_session_past_cookie_expire_does_not_load() -> None:
    clock = Clock()
    store = cookie_store(clock)
    cookies = dict(await store.save(make_session(created_at=NOW), {}))
    clock.now = NOW + 3600
    with pytest.raises(CookieError):
        await store.load(cookies)


async def test_the_refresh_lock_is_free_and_update_writes_nothing() -> None:
    """The cookie is per browser: refresh.py's in-process single flight is the only lock needed."""
    store = cookie_store(Clock())
    session = make_session()
    async with store.refresh_lock(session), store.refresh_lock(session):     # re-entrant: nothing is held
        assert await store.update(session) is None


class DownDenylist(MemoryDenylist):
    async def ended(self, session: object) -> bool:  # type: ignore[override]
        raise StoreUnavailable("Redis could not be reached (ConnectionError).")

    async def healthy(self) -> bool:
        return False


async def test_a_denylist_that_is_down_makes_the_store_unavailable_not_signed_out() -> None:
    clock = Clock()
    store = cookie_store(clock, DownDenylist(clock))
    cookies = dict(store.codec.dump(make_session()))
    with pytest.raises(StoreUnavailable):
        await store.load(cookies)
    assert not await store.healthy()


async def test_first_use_and_close_go_to_the_denylist() -> None:
    clock = Clock()
    denylist = MemoryDenylist(clock)
    store = cookie_store(clock, denylist)
    assert await store.first_use("jti", 60) and not await denylist.first_use("jti", 60)
    await store.close()
