"""One contract, every session store: the cookie store and the Redis store (against a real redis-server)."""

from __future__ import annotations

import asyncio
import base64
import time
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
