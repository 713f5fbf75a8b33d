"""Tests for proxy.redis_store against a real redis-server (tests/support/redis_server.py).

tests/contract holds what every store must do; this file pins what is the Redis store's own: the ticket,
the key's TTL from an injected clock, the tombstone and the save script, reload with and without the
session's key, the cross-replica refresh lock, the index sets, the Redis denylist and the health cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy import redis_store as module
from proxy.config import RedisConfig, Secret
from proxy.crypto import Sealer, random_token
from proxy.ending import Reason, SessionEnd
from proxy.errors import CookieError, SessionWasEnded, StoreUnavailable
from proxy.model import Identity, Session
from proxy.redis_store import TOMBSTONE, RedisDenylist, RedisStore, connect

from tests.support.ports import free_port
from tests.support.redis_server import start_redis
from tests.unit.conftest import make_config

NAME = "_authproxy"
LIFE = 3600.0
PREFIX = "u:"
SEALER = Sealer(make_config().cookie.keys)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def session(sub: str = "alice", sid: str | None = "sid-1", **changes: Any) -> Session:
    now = changes.pop("now", time.time())
    base: dict[str, Any] = dict(identity=Identity(sub=sub), access_token=f"AT-{random_token(4)}", created_at=now,
                                issued_at=now, expires_at=now + 300, refresh_token="RT", sid=sid,
                                id=random_token(16))
    base.update(changes)
    return Session(**base)


@pytest.fixture
async def raw(redis_server: Any) -> AsyncIterator[Any]:
    """A plain client, to look at and tamper with what the store wrote."""
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def make(redis_server: Any) -> AsyncIterator[Any]:
    """``make(**config)``: a RedisStore on the test's server (a new one is another replica)."""
    stores: list[RedisStore] = []

    def factory(clock: Any = time.time, **config: Any) -> RedisStore:
        cfg = RedisConfig(url=redis_server.url, key_prefix=PREFIX, **config)
        stores.append(RedisStore(cfg, NAME, LIFE, SEALER, clock=clock))
        return stores[-1]

    yield factory
    for store in stores:
        await store.close()


def end(**names: str) -> SessionEnd:
    return SessionEnd(Reason.SIGN_OUT, time.time(), 120.0, **names)


# -- the ticket and the stored session ----------------------------------------------------------------------


async def test_the_cookie_is_a_sealed_ticket_and_redis_holds_the_session_with_its_remaining_life(make, raw) -> None:
    clock = Clock()
    store = make(clock)
    s = session(now=clock.now - 600)
    [(name, ticket)] = await store.save(s, {})
    assert name == NAME and s.id not in ticket and ticket.startswith("1.")
    stored = await raw.get(f"{PREFIX}s:{s.id}")
    assert stored.startswith(b"1.") and s.access_token.encode() not in stored
    assert LIFE - 600 - 2 <= await raw.ttl(f"{PREFIX}s:{s.id}") <= LIFE - 600
    assert store.owned_names({NAME: ticket, "other": "x"}) == [NAME]
    assert store.owned_names({f"{NAME}_0": "x"}) == []            # the Redis store never chunks


async def test_a_session_at_the_end_of_its_life_is_kept_at_least_a_second(make, raw) -> None:
    clock = Clock()
    store = make(clock)
    s = session(now=clock.now - LIFE - 100)
    await store.save(s, {})
    assert 0 < await raw.ttl(f"{PREFIX}s:{s.id}") <= 1


async def test_a_ticket_for_another_session_or_a_bad_ticket_gets_a_new_one(make) -> None:
    store = make()
    first = session()
    cookies = dict(await store.save(first, {}))
    second = session("bob", sid="sid-2")
    new = dict(await store.save(second, cookies))                 # a new sign-in in the same browser
    assert new[NAME] != cookies[NAME]
    assert (await store.load(new)).identity.sub == "bob" and (await store.load(cookies)).identity.sub == "alice"
    fresh = dict(await store.save(session(), {NAME: "1.not-a-ticket"}))
    assert (await store.load(fresh)).identity.sub == "alice"


async def test_a_session_without_an_id_is_given_one(make, raw) -> None:
    store = make()
    cookies = dict(await store.save(session(id=""), {}))
    assert (await store.load(cookies)).identity.sub == "alice"
    assert len([k for k in await raw.keys(f"{PREFIX}s:*")]) == 1


@pytest.mark.parametrize("value", [b"1.garbage", b"not sealed"])
async def test_a_stored_value_that_does_not_open_is_a_cookie_error(make, raw, value: bytes) -> None:
    store = make()
    s = session()
    cookies = dict(await store.save(s, {}))
    await raw.set(f"{PREFIX}s:{s.id}", value)
    with pytest.raises(CookieError):
        await store.load(cookies)


async def test_a_session_gone_from_redis_is_ended(make, raw) -> None:
    store = make()
    s = session()
    cookies = dict(await store.save(s, {}))
    await raw.delete(f"{PREFIX}s:{s.id}")                       # expired, or flushed
    with pytest.raises(SessionWasEnded):
        await store.load(cookies)


# -- ends: the tombstone and the save script ----------------------------------------------------------------


async def test_record_end_tombstones_and_counts_live_sessions_only(make, raw) -> None:
    store = make()
    s = session()
    await store.save(s, {})
    assert await store.record_end(end(session_id=s.id)) == 1
    assert await raw.get(f"{PREFIX}s:{s.id}") == TOMBSTONE.encode()
    assert 0 < await raw.ttl(f"{PREFIX}s:{s.id}") <= 120
    assert await store.record_end(end(session_id=s.id)) == 0        # already ended
    assert await store.record_end(end(session_id="never-existed")) == 0


async def test_an_end_by_sub_ends_every_session_of_that_user(make) -> None:
    store = make()
    a1 = dict(await store.save(session("alice", sid="a1"), {}))
    a2 = dict(await store.save(session("alice", sid="a2"), {}))
    b = dict(await store.save(session("bob", sid="b"), {}))
    assert await store.record_end(end(sub="alice")) == 2
    for cookies in (a1, a2):
        with pytest.raises(SessionWasEnded):
            await store.load(cookies)
    assert (await store.load(b)).identity.sub == "bob"


async def test_a_refresh_does_not_recreate_a_session_that_is_gone(make, raw) -> None:
    store = make()
    s = session()
    cookies = dict(await store.save(s, {}))
    loaded = await store.load(cookies)
    await raw.delete(f"{PREFIX}s:{s.id}")
    await store.update(loaded.with_tokens(access_token="AT-late"))        # under the lock: writes nothing
    assert await raw.get(f"{PREFIX}s:{s.id}") is None
    with pytest.raises(SessionWasEnded):
        await store.save(loaded.with_tokens(access_token="AT-late"), cookies)   # the response's save neither
    assert await raw.get(f"{PREFIX}s:{s.id}") is None


async def test_the_index_sets_hold_keyed_names_and_drop_expired_sessions(make, raw) -> None:
    store = make()
    old = session("alice", sid="s-old")
    await store.save(old, {})
    index = f"{PREFIX}sub:{SEALER.blind('alice')}"
    assert await raw.smembers(index) == {old.id.encode()}
    assert not [k for k in await raw.keys(f"{PREFIX}*") if b"alice" in k]
    await raw.delete(f"{PREFIX}s:{old.id}")                               # it expired
    new = session("alice", sid="s-new")
    await store.save(new, {})
    assert await raw.smembers(index) == {new.id.encode()}                 # pruned at the next sign-in
    assert await raw.ttl(index) > LIFE - 5


# -- reload, and the keys remembered for it ----------------------------------------------------------------


async def test_reload_sees_another_replicas_refresh(make) -> None:
    one, two = make(), make()
    s = session()
    cookies = dict(await one.save(s, {}))
    loaded = await two.load(cookies)
    await one.update(loaded.with_tokens(access_token="AT-from-one"))
    assert (await two.reload(loaded)).access_token == "AT-from-one"
    await one.record_end(end(session_id=s.id))
    assert await two.reload(loaded) is None


async def test_reload_without_the_sessions_key_still_knows_whether_it_ended(make, monkeypatch) -> None:
    """A WebSocket's session can leave the bounded key memory; an ended one must still not refresh."""
    monkeypatch.setattr(module, "KEYS_REMEMBERED", 2)
    store = make()
    sessions = [session(sid=f"sid-{i}") for i in range(3)]
    for s in sessions:
        await store.save(s, {})
    first = sessions[0]
    assert first.id not in store._session_keys and len(store._session_keys) == 2
    assert await store.reload(first) is first                  # exists: the caller's copy, unread
    await store.update(first.with_tokens(access_token="AT-x"))  # no key: nothing can be written
    await store.record_end(end(session_id=first.id))
    assert await store.reload(first) is None
    legacy = session(id="")
    assert await store.reload(legacy) is legacy                # sealed before ids: nothing to look up


# -- the refresh lock -------------------------------------------------------------------------------------


async def test_the_refresh_lock_is_held_across_replicas(make) -> None:
    one, two = make(lock_timeout=5.0), make(lock_timeout=5.0)
    s = session()
    order: list[str] = []
    async with one.refresh_lock(s):
        waiter = asyncio.create_task(_hold(two, s, order))
        await asyncio.sleep(0.3)
        assert not waiter.done()                               # two waits while one holds it
        order.append("one releases")
    await asyncio.wait_for(waiter, 5)
    assert order == ["one releases", "two holds"]


async def _hold(store: RedisStore, s: Session, order: list[str]) -> None:
    async with store.refresh_lock(s):
        order.append("two holds")


async def test_a_crashed_holders_lock_expires_and_is_not_released_by_it(make, raw) -> None:
    store = make(lock_timeout=0.5)
    s = session()
    await raw.set(f"{PREFIX}lock:{s.id}", b"crashed-holder", px=500)
    started = time.monotonic()
    async with store.refresh_lock(s):
        assert time.monotonic() - started >= 0.3              # waited out the crashed holder's lock
        await raw.set(f"{PREFIX}lock:{s.id}", b"someone-else")  # ours expired meanwhile; another took it
    assert await raw.get(f"{PREFIX}lock:{s.id}") == b"someone-else"   # released only by its holder


async def test_a_lock_held_for_too_long_is_store_unavailable(make, raw) -> None:
    store = make(lock_timeout=0.2)
    s = session()
    await raw.set(f"{PREFIX}lock:{s.id}", b"stuck")            # no expiry: never released
    with pytest.raises(StoreUnavailable, match="refresh lock"):
        async with store.refresh_lock(s):
            pass


# -- logout-token ids, health, connecting ------------------------------------------------------------------


async def test_a_logout_token_id_is_single_use_across_replicas_and_stored_keyed(make, raw) -> None:
    one, two = make(), make()
    assert await one.first_use("jti-1", 60)
    assert not await two.first_use("jti-1", 60)
    assert not await raw.keys(f"{PREFIX}*jti-1*")


async def test_health_is_cached_for_a_moment(make, redis_server, monkeypatch) -> None:
    store = make()
    assert await store.healthy()
    await redis_server.kill()
    assert await store.healthy()                               # /ready may be polled often: cached
    monkeypatch.setattr(module, "HEALTH_CACHE", 0.0)
    assert not await store.healthy()


async def test_every_redis_failure_is_store_unavailable(make, redis_server) -> None:
    store = make(timeout=1.0, connect_timeout=1.0)
    s = session()
    cookies = dict(await store.save(s, {}))
    await redis_server.kill()
    for call in (store.save(session(), {}), store.load(cookies), store.record_end(end(sub="alice")),
                 store.first_use("j", 60), store.reload(session(id="not-remembered"))):
        with pytest.raises(StoreUnavailable):
            await call


async def test_connect_sends_the_password() -> None:
    server = await start_redis(free_port(), password="redis-pass")
    try:
        for password, works in (("redis-pass", True), ("wrong", False)):
            client = connect(RedisConfig(url=server.url, password=Secret(password)))
            try:
                if works:
                    assert await client.ping()
                else:
                    with pytest.raises(module.RedisError):
                        await client.ping()
            finally:
                await client.aclose()
    finally:
        await server.stop()


# -- the cookie store's Redis denylist ----------------------------------------------------------------------


@pytest.fixture
async def denylist(redis_server: Any) -> AsyncIterator[RedisDenylist]:
    deny = RedisDenylist(RedisConfig(url=redis_server.url, key_prefix=PREFIX), SEALER.blind)
    yield deny
    await deny.close()


async def test_the_denylist_ends_by_id_sid_and_sub(denylist, raw) -> None:
    now = time.time()
    await denylist.record(SessionEnd(Reason.SIGN_OUT, now, 60.0, session_id="s1"))
    await denylist.record(SessionEnd(Reason.BACKCHANNEL, now, 60.0, sid="sid-x"))
    await denylist.record(SessionEnd(Reason.BACKCHANNEL, now, 60.0, sub="bob"))
    assert await denylist.ended(session(id="s1", sid=None))
    assert not await denylist.ended(session(id="s2", sid=None))
    assert await denylist.ended(session(sid="sid-x", now=now - 1))
    assert not await denylist.ended(session(sid="sid-x", now=now + 1))            # signed in afterwards
    assert await denylist.ended(session("bob", sid=None, now=now))
    assert not await denylist.ended(session("bob", sid=None, now=now + 1))
    assert not await denylist.ended(session(id="", sid=None))                      # no id names every "" id
    assert not [k for k in await raw.keys(f"{PREFIX}*") if b"bob" in k or b"sid-x" in k]


async def test_an_earlier_end_arriving_late_does_not_undo_a_later_one(denylist) -> None:
    now = time.time()
    await denylist.record(SessionEnd(Reason.BACKCHANNEL, now, 60.0, sub="bob"))
    await denylist.record(SessionEnd(Reason.BACKCHANNEL, now - 100, 60.0, sub="bob"))
    assert await denylist.ended(session("bob", sid=None, now=now - 50))


async def test_the_denylist_keeps_an_end_for_its_ttl(denylist, raw) -> None:
    await denylist.record(SessionEnd(Reason.SIGN_OUT, time.time(), 30.0, session_id="s1"))
    (key,) = await raw.keys(f"{PREFIX}deny:id:*")
    assert 0 < await raw.ttl(key) <= 30
    assert await denylist.first_use("j", 60) and not await denylist.first_use("j", 60)
    assert await denylist.healthy()


# -- the idle timeout: the key's TTL is the record of use ---------------------------------------------------------


async def test_with_an_idle_timeout_a_near_end_session_keeps_its_absolute_end_and_needs_no_touch(redis_server,
                                                                                                 raw) -> None:
    clock = Clock()
    store = RedisStore(RedisConfig(url=redis_server.url, key_prefix=PREFIX), NAME, LIFE, SEALER, clock=clock,
                       idle_timeout=60)
    try:
        s = session(now=clock.now - LIFE + 10)                 # 10 s left: less than the 75 s idle window
        cookies = dict(await store.save(s, {}))
        assert 8_000 < await raw.pttl(f"{PREFIX}s:{s.id}") <= 10_000
        loaded = await store.load(cookies)
        assert loaded.last_seen == clock.now and not loaded.seen_due(60, clock.now)
        young = session(now=clock.now)
        cookies = dict(await store.save(young, {}))
        assert 74_000 < await raw.pttl(f"{PREFIX}s:{young.id}") <= 75_000
        assert (await raw.get(f"{PREFIX}s:{young.id}")).startswith(b"1.")
        assert (await store.load(cookies)).last_seen == pytest.approx(clock.now, abs=1.5)
    finally:
        await store.close()


async def test_a_use_that_cannot_reach_redis_is_logged_and_the_request_goes_on(caplog) -> None:
    cfg = RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", key_prefix=PREFIX, timeout=0.5, connect_timeout=0.5)
    store = RedisStore(cfg, NAME, LIFE, SEALER, idle_timeout=60)
    caplog.set_level("WARNING", logger="authproxy.session")
    try:
        assert await store.seen(session(), time.time()) is None
    finally:
        await store.close()
    assert any("session use not recorded in Redis" in r.getMessage() for r in caplog.records)


async def test_a_session_stored_before_the_idle_timeout_counts_from_sign_in_as_a_cookie_does(make, redis_server,
                                                                                             raw) -> None:
    """Turning cookie.idle_timeout on: a key stored without it lives to the session's absolute end, which no use
    set. It counts as last used at sign-in (the cookie store's reading of a cookie without last_seen): ended
    when that is longer ago than the window, else its first use brings the TTL down to the window."""
    before = make()                                              # no idle timeout
    old, recent = session(now=time.time() - 100), session(now=time.time() - 20)
    old_cookies, recent_cookies = dict(await before.save(old, {})), dict(await before.save(recent, {}))
    after = RedisStore(RedisConfig(url=redis_server.url, key_prefix=PREFIX), NAME, LIFE, SEALER, idle_timeout=60)
    try:
        with pytest.raises(SessionWasEnded):
            await after.load(old_cookies)                        # 100 s since sign-in > the 75 s window
        loaded = await after.load(recent_cookies)
        assert loaded.last_seen == recent.created_at and loaded.seen_due(60, time.time())
        assert await raw.pttl(f"{PREFIX}s:{recent.id}") > 3_000_000
        await after.seen(loaded, time.time())
        assert 74_000 < await raw.pttl(f"{PREFIX}s:{recent.id}") <= 75_000
        assert (await after.load(recent_cookies)).last_seen == pytest.approx(time.time(), abs=1.5)
    finally:
        await after.close()
