"""One contract, every session store: the cookie store and the Redis store (against a real redis-server)."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import replace
from typing import Any

import pytest

from proxy.config import RedisConfig
from proxy.cookies import CookieCodec
from proxy.crypto import Sealer, fingerprint, random_token
from proxy.ending import Reason, SessionEnd
from proxy.errors import CookieError
from proxy.redis_store import RedisStore
from proxy.session import Identity, Session
from proxy.errors import SessionWasEnded, StoreUnavailable
from proxy.store import CookieStore, MemoryDenylist
from tests.unit.conftest import make_config

SECRET = base64.urlsafe_b64encode(b"c" * 32).decode()
OTHER = base64.urlsafe_b64encode(b"x" * 32).decode()
EXPIRE = 3600.0


def session(sub: str = "alice", sid: str | None = "sid-1", token: str = "AT-secret-1", **changes) -> Session:
    now = time.time()
    base = dict(identity=Identity(sub=sub, email=f"{sub}@x.test"), access_token=token, created_at=now,
                issued_at=now, expires_at=now + 300, refresh_token=f"RT-{token}", id_token="ID-token", sid=sid,
                id=random_token(16))
    base.update(changes)
    return Session(**base)


def cookie_store(secret: str = SECRET) -> CookieStore:
    cfg = make_config(cookie={"secret": secret, "expire": "1h"}).cookie
    return CookieStore(CookieCodec(cfg, Sealer(cfg.keys)), MemoryDenylist())


def redis_store(url: str, secret: str = SECRET, **redis: Any) -> RedisStore:
    cfg = make_config(cookie={"secret": secret, "expire": "1h"})
    return RedisStore(RedisConfig(url=url, key_prefix="t:", **redis), cfg.cookie.name, EXPIRE,
                      Sealer(cfg.cookie.keys))


@pytest.fixture(params=["cookie", "redis"])
async def make_store(request, redis_server):
    """A factory: ``make_store(secret=...)`` builds a store of the parametrised kind."""
    stores = []
    if request.param == "redis":
        def factory(secret: str = SECRET):
            stores.append(redis_store(redis_server.url, secret))
            return stores[-1]
    else:
        def factory(secret: str = SECRET):
            stores.append(cookie_store(secret))
            return stores[-1]
    factory.kind = request.param
    yield factory
    for store in stores:
        await store.close()


async def test_round_trip(make_store):
    store = make_store()
    s = session()
    cookies = dict(await store.save(s, {}))
    assert await store.load(cookies) == s


async def test_how_the_user_signed_in_survives_the_store_and_an_update(make_store):
    """``acr`` and ``auth_time`` (step-up) are kept as the sign-in set them, through a save and a refresh's update."""
    store = make_store()
    s = session(acr="urn:example:mfa", auth_time=time.time() - 60)
    cookies = dict(await store.save(s, {}))
    loaded = await store.load(cookies)
    assert loaded is not None and (loaded.acr, loaded.auth_time) == (s.acr, s.auth_time)
    refreshed = replace(loaded, access_token="AT-secret-2", refresh_token="RT-2")
    await store.update(refreshed)
    cookies = dict(await store.save(refreshed, cookies))
    again = await store.load(cookies)
    assert again is not None and (again.acr, again.auth_time, again.access_token) == (s.acr, s.auth_time, "AT-secret-2")


async def test_no_cookie_is_no_session(make_store):
    assert await make_store().load({"other": "x"}) is None


async def test_cookie_never_shows_a_token(make_store):
    cookies = dict(await make_store().save(session(token="AT-visible?"), {}))
    assert all("AT-visible" not in v and "alice" not in v for v in cookies.values())


async def test_tampered_or_foreign_cookie_is_cookie_error(make_store):
    store = make_store()
    cookies = dict(await store.save(session(), {}))
    name, value = next(iter(cookies.items()))
    flipped = value[:-3] + ("A" if value[-3] != "A" else "B") + value[-2:]
    with pytest.raises(CookieError):
        await store.load({name: flipped})
    with pytest.raises(CookieError):
        await make_store(secret=OTHER).load(cookies)


async def test_saving_again_keeps_the_ticket_and_updates_tokens(make_store):
    store = make_store()
    s = session()
    cookies = dict(await store.save(s, {}))
    refreshed = s.with_tokens(access_token="AT-secret-2")
    again = dict(await store.save(refreshed, cookies))
    assert (await store.load(again)).access_token == "AT-secret-2"
    if make_store.kind == "redis":
        assert again == cookies                                    # same ticket: the cookie need not change
        assert (await store.load(cookies)).access_token == "AT-secret-2"


async def test_two_sessions_stay_apart(make_store):
    store = make_store()
    a = dict(await store.save(session("alice"), {}))
    b = dict(await store.save(session("bob", sid="sid-2"), {}))
    assert (await store.load(a)).identity.sub == "alice"
    assert (await store.load(b)).identity.sub == "bob"


def ended(reason: Reason = Reason.BACKCHANNEL, **names) -> SessionEnd:
    return SessionEnd(reason, time.time(), EXPIRE, **names)


async def test_backchannel_end_by_sid_and_by_sub(make_store):
    store = make_store()
    a1 = dict(await store.save(session("alice", sid="sid-a1", token="t1"), {}))
    a2 = dict(await store.save(session("alice", sid="sid-a2", token="t2"), {}))
    b = dict(await store.save(session("bob", sid="sid-b"), {}))
    await store.record_end(ended(sid="sid-a1"))
    with pytest.raises(CookieError):
        await store.load(a1)
    assert (await store.load(a2)).identity.sub == "alice"
    await store.record_end(ended(sub="alice"))
    with pytest.raises(CookieError):
        await store.load(a2)
    assert (await store.load(b)).identity.sub == "bob"


async def test_sign_in_after_a_sub_wide_logout_is_not_ended(make_store):
    store = make_store()
    await store.record_end(ended(sub="alice"))
    later = session("alice", sid="sid-new", created_at=time.time() + 1)
    cookies = dict(await store.save(later, {}))
    assert (await store.load(cookies)).sid == "sid-new"


@pytest.mark.parametrize("names", [{"session_id": "own"}, {"sid": "sid-1"}, {"sub": "alice"}])
async def test_ended_is_final(make_store, names):
    """No save after the end brings the session back: not the response of a request that refreshed it
    while in flight, not a refresh saved under the refresh lock, not a copy of the old cookie."""
    store = make_store()
    s = session()
    cookies = dict(await store.save(s, {}))
    loaded = await store.load(cookies)
    other = dict(await store.save(session("bob", sid="sid-b"), {}))
    await store.record_end(ended(Reason.SIGN_OUT, **{k: s.id if v == "own" else v for k, v in names.items()}))
    refreshed = loaded.with_tokens(access_token="AT-after-end")
    with pytest.raises(SessionWasEnded):
        await store.save(refreshed, cookies)
    async with store.refresh_lock(loaded):
        await store.update(refreshed)                  # a refresh that finishes after the end writes nothing
    for attempt in (cookies, cookies):
        with pytest.raises(CookieError):
            await store.load(attempt)
    assert (await store.load(other)).identity.sub == "bob"


async def test_refresh_lock_and_reload(make_store):
    store = make_store()
    s = session()
    cookies = dict(await store.save(s, {}))
    loaded = await store.load(cookies)
    async with store.refresh_lock(loaded):
        current = await store.reload(loaded)
        assert current == s
        await store.update(current.with_tokens(access_token="AT-after-lock"))
    if make_store.kind == "redis":
        assert (await store.load(cookies)).access_token == "AT-after-lock"


async def test_healthy(make_store):
    assert await make_store().healthy()


async def test_redis_holds_only_ciphertext(redis_server):
    import redis.asyncio as aioredis
    store = redis_store(redis_server.url)
    await store.save(session(token="AT-in-redis"), {})
    client = aioredis.from_url(redis_server.url)
    try:
        keys = await client.keys("t:*")
        dump = b"".join([k + (await client.get(k) if k.startswith(b"t:s:") else b"".join(await client.smembers(k)))
                         for k in keys])
    finally:
        await client.aclose()
        await store.close()
    assert dump and b"AT-in-redis" not in dump and b"alice" not in dump and b"RT-" not in dump


async def test_redis_index_names_are_keyed_and_ended_sessions_leave_them(redis_server):
    """Index keys are an HMAC under a key from the cookie secret, not a plain hash anyone can compute
    from a guessed user name; an ended session is taken out of its index sets."""
    import redis.asyncio as aioredis
    store = redis_store(redis_server.url)
    s = session("alice", sid="sid-x")
    await store.save(s, {})
    client = aioredis.from_url(redis_server.url)
    try:
        keys = {k.decode() for k in await client.keys("t:*")}
        assert not {f"t:sub:{fingerprint('alice')}", f"t:sid:{fingerprint('sid-x')}"} & keys
        sub_index = f"t:sub:{Sealer(make_config(cookie={'secret': SECRET}).cookie.keys).blind('alice')}"
        assert await client.smembers(sub_index) == {s.id.encode()}
        await store.record_end(ended(Reason.SIGN_OUT, session_id=s.id))
        assert await client.smembers(sub_index) == set()
        assert await client.get(f"t:s:{s.id}") == b"ended"
    finally:
        await client.aclose()
        await store.close()


async def test_redis_down_is_store_unavailable(redis_server):
    store = redis_store(redis_server.url)
    cookies = dict(await store.save(session(), {}))
    await redis_server.kill()
    with pytest.raises(StoreUnavailable):
        await store.load(cookies)
    assert not await store.healthy()
    await store.close()


async def test_logout_token_ids_are_single_use(make_store):
    store = make_store()
    assert await store.first_use("jti-1", 60) is True
    assert await store.first_use("jti-1", 60) is False
    assert await store.first_use("jti-2", 60) is True


async def test_redis_refresh_lock_outlives_its_lease_while_its_holder_runs(redis_server):
    """A refresh grant to a slow provider is awaited far longer than ``lock_timeout``: the lock is extended
    meanwhile, so another replica never takes it and sends the (rotated) refresh token again."""
    holder, other = (redis_store(redis_server.url, lock_timeout=0.3) for _ in range(2))
    session_ = session(id="s-lock")
    try:
        async with holder.refresh_lock(session_):
            await asyncio.sleep(1.0)                               # three leases
            with pytest.raises(StoreUnavailable):
                async with other.refresh_lock(session_):
                    pytest.fail("another replica took a lock whose holder is still running")
        async with other.refresh_lock(session_):                 # released: free at once
            pass
    finally:
        await holder.close()
        await other.close()


# -- the idle timeout (cookie.idle_timeout), in every store ------------------------------------------------

IDLE = 1.0           # a touch interval of 0.25 s: an unused session ends 1.0-1.25 s after its last recorded use


@pytest.fixture(params=["cookie", "redis"])
async def idle_store(request, redis_server):
    if request.param == "redis":
        cfg = make_config(cookie={"secret": SECRET, "expire": "1h", "idle_timeout": IDLE})
        store: Any = RedisStore(RedisConfig(url=redis_server.url, key_prefix="t:"), cfg.cookie.name, EXPIRE,
                                Sealer(cfg.cookie.keys), idle_timeout=IDLE)
    else:
        cfg = make_config(cookie={"secret": SECRET, "expire": "1h", "idle_timeout": IDLE})
        store = CookieStore(CookieCodec(cfg.cookie, Sealer(cfg.cookie.keys)), MemoryDenylist())
    store.kind = request.param
    yield store
    await store.close()


async def use(store, cookies: dict[str, str]) -> dict[str, str]:
    """One request, as the gate makes it: load, and record the use when due (a new cookie, or the TTL slid)."""
    loaded = await store.load(cookies)
    now = time.time()
    if loaded.seen_due(IDLE, now):
        touched = await store.seen(loaded, now)
        if touched is not None:
            return dict(await store.save(touched, cookies))
    return cookies


async def test_an_unused_session_ends_after_the_idle_window(idle_store):
    cookies = dict(await idle_store.save(session(last_seen=time.time()), {}))
    assert await idle_store.load(cookies) is not None
    await asyncio.sleep(1.35)
    with pytest.raises(CookieError):
        await idle_store.load(cookies)


async def test_a_session_in_use_outlives_the_idle_window_and_an_old_copy_does_not(idle_store):
    first = dict(await idle_store.save(session(last_seen=time.time()), {}))
    cookies = first
    for _ in range(5):                                 # 1.75 s of use, past the 1.25 s window
        await asyncio.sleep(0.35)
        cookies = await use(idle_store, cookies)
    assert (await idle_store.load(cookies)).identity.sub == "alice"
    if idle_store.kind == "cookie":
        assert cookies != first                        # the use is in the new cookie; the first copy is idle
        with pytest.raises(CookieError):
            await idle_store.load(first)
    else:
        assert cookies == first                        # the ticket never changes: the use is the key's TTL


async def test_a_refresh_is_no_use(idle_store):
    """A refresh (a WebSocket's, in the background) saves new tokens but does not keep an idle session."""
    s = session(last_seen=time.time())
    cookies = dict(await idle_store.save(s, {}))
    await asyncio.sleep(0.6)
    loaded = await idle_store.load(cookies)
    async with idle_store.refresh_lock(loaded):
        await idle_store.update(loaded.with_tokens(access_token="AT-refreshed"))
    if idle_store.kind == "cookie":
        return                                         # the cookie store's refresh writes no cookie by itself
    await asyncio.sleep(0.8)
    with pytest.raises(CookieError):
        await idle_store.load(cookies)


async def test_a_recorded_use_never_revives_an_ended_session(idle_store):
    s = session(last_seen=time.time())
    cookies = dict(await idle_store.save(s, {}))
    loaded = await idle_store.load(cookies)
    await idle_store.record_end(ended(Reason.SIGN_OUT, session_id=s.id))
    touched = await idle_store.seen(loaded, time.time())
    if touched is not None:
        with pytest.raises(SessionWasEnded):
            await idle_store.save(touched, cookies)
    with pytest.raises(CookieError):
        await idle_store.load(cookies)


async def test_redis_use_slides_the_ttl_forward_only_and_never_a_tombstone_s(redis_server):
    import redis.asyncio as aioredis
    cfg = make_config(cookie={"secret": SECRET, "expire": "1h", "idle_timeout": "60s"})
    store = RedisStore(RedisConfig(url=redis_server.url, key_prefix="t:"), cfg.cookie.name, EXPIRE,
                       Sealer(cfg.cookie.keys), idle_timeout=60)
    client = aioredis.from_url(redis_server.url)
    try:
        s = session()
        cookies = dict(await store.save(s, {}))
        key = f"t:s:{s.id}"
        assert 74_000 < await client.pttl(key) <= 75_000            # the idle window: 60 s + 15 s
        loaded = await store.load(cookies)
        assert abs(loaded.last_seen - time.time()) < 2              # told by the TTL: just used
        await client.pexpire(key, 50_000)                            # as if last used 25 s ago
        loaded = await store.load(cookies)
        assert 23 < time.time() - loaded.last_seen < 27 and loaded.seen_due(60, time.time())
        await store.seen(loaded, time.time() - 40)                   # an older use (a late request) never shortens
        assert 49_000 < await client.pttl(key) <= 50_000
        await store.seen(loaded, time.time())
        assert 74_000 < await client.pttl(key) <= 75_000
        await store.record_end(ended(Reason.SIGN_OUT, session_id=s.id))
        tombstone_ttl = await client.pttl(key)
        await store.seen(loaded, time.time())
        assert await client.get(key) == b"ended" and await client.pttl(key) <= tombstone_ttl
    finally:
        await client.aclose()
        await store.close()
