"""Sessions in Redis: the cookie holds a ticket, Redis holds only ciphertext.

The ticket is ``{session id, per-session key}``, sealed like any cookie (cookie secret, cookie name as
associated data). Redis stores the session sealed under the per-session key, keyed by the id, with a
TTL equal to the session's remaining life. So a dump of Redis reveals no token (the keys are only in
browsers), and a cookie alone reveals no token (the tokens are only in Redis). oauth2-proxy's
``ticket.go`` does the same; aiohttp-session's Redis store does not (plain text).

Refresh across replicas takes a short lock (``SET NX PX``, released only by its holder with a
compare-and-delete script): lock → reload → still due? → refresh → save → unlock. A crashed holder
blocks nobody longer than ``lock_timeout``. Every Redis failure becomes ``StoreUnavailable`` (a 503),
never a lost session.

An end is final (``record_end``): the session's key is overwritten with a tombstone that lives as long
as a cookie could, and every save runs one script on that one key (so it works on a Cluster too) that
refuses to write over a tombstone — or, for a refresh, over a session that is gone. So a request still
in flight when the user signs out cannot re-create the session with its plain save. Back-channel logout
finds sessions through ``sid`` and ``sub`` index sets, named by an HMAC under a key derived from the
cookie secret (``Sealer.blind``), so neither a dump nor a guess of user names reveals who is signed in;
each session remembers the sets it is in, and an end takes it out of them.

With ``cookie.idle_timeout`` the session key lives no longer than the idle window
(``model.idle_window``) past its last recorded use: ``seen`` slides its TTL forward (never back, never
past the session's absolute end, never on a tombstone) at most every ``model.touch_interval``, and a
load reads the TTL with the value (one round trip) to know when the use was last recorded. An idle
session's key simply expires. Nothing else moves the TTL: a refresh keeps the key's TTL as it is, so a
WebSocket refreshing in the background does not keep an idle session alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from .config import RedisConfig
from .crypto import Sealer, b64url_decode, b64url_encode, random_token
from .errors import CookieError, SessionWasEnded, StoreUnavailable
from .model import Session, idle_window

if TYPE_CHECKING:
    from .ending import SessionEnd

log = logging.getLogger("authproxy.session")

# How often a waiter looks whether another replica's refresh lock is gone.
LOCK_POLL = 0.05
# /ready asks Redis at most this often.
HEALTH_CACHE = 1.0
# Per-session keys remembered for reloading during a refresh (a refresh always follows a load here).
KEYS_REMEMBERED = 10_000
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# Extend a lock only while it is still ours. KEYS[1] lock; ARGV: token, milliseconds. 1 = extended.
_EXTEND = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
           "else return 0 end")
# What an ended session's key holds instead of the sealed session (sealed values start with "1.").
TOMBSTONE = "ended"
# Save: never over a tombstone; a refresh ("update") only over a session that still exists, keeping its
# TTL (the idle window a request last slid, or the absolute end).
# KEYS[1] session key; ARGV: sealed session, ttl milliseconds for a new one, "new"/"update", tombstone. 1 = saved.
_SAVE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[4] or (current == false and ARGV[3] == 'update') then return 0 end
if ARGV[3] == 'update' then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', left)
    return 1
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# A use (idle timeout): slide a live session's TTL forward to ARGV[1] ms; never shorter, never a tombstone's
# — except a TTL longer than the idle window (ARGV[3] ms), which no use set (a key stored before the idle
# timeout was configured): that one comes down to ARGV[1].
_TOUCH = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[2] then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) or left > tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""
# Seconds of slack when telling a TTL capped by the session's absolute end from one a use set.
_TTL_SLACK = 1.5
# End: the tombstone replaces the session whatever it was; 1 if a live session was there.
_END = """
local current = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if current and current ~= ARGV[1] then return 1 end
return 0
"""

# Denylist entry: set KEYS[1] to the end's time ARGV[1] for ARGV[2] seconds, unless a later end is there.
_LATEST = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def connect(config: RedisConfig) -> Any:
    """A redis-py asyncio client for a single server, a Sentinel-managed master, or a Cluster.

    The password (``session.redis.password``) goes to the data nodes in every topology; sentinels are
    addressed by their URLs' host and port (default 26379) and get TLS when their URL is rediss://.
    """
    timeouts: dict[str, Any] = {"socket_connect_timeout": config.connect_timeout, "socket_timeout": config.timeout}
    password = config.password.get() if config.password else None
    # rediss://: redis-py verifies the server's certificate and name against the system CAs, plus ca_file.
    ca = {"ssl_ca_certs": config.ca_file} if config.ca_file else {}
    if config.sentinel_master:
        hosts = [(urlsplit(u).hostname or "127.0.0.1", urlsplit(u).port or 26379) for u in config.sentinel_urls]
        sentinel_tls = {"ssl": True, **ca} if any(u.startswith("rediss://") for u in config.sentinel_urls) else {}
        sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, **sentinel_tls}, **timeouts)
        return sentinel.master_for(config.sentinel_master, password=password, **timeouts)
    tls = ca if config.url.startswith("rediss://") else {}
    if config.cluster:
        return RedisCluster.from_url(config.url, password=password, **timeouts, **tls)
    return aioredis.from_url(config.url, password=password, **timeouts, **tls)


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Any Redis failure inside is ``StoreUnavailable``: a 503 page, never a 500 or a lost session."""
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"Redis could not be reached ({type(exc).__name__}).") from exc


class _Health:
    """Whether Redis answers a PING, asked at most once per HEALTH_CACHE (``/ready`` may be polled often)."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._redis = client
        self._timeout = timeout
        self._ok_at = float("-inf")

    async def check(self) -> bool:
        now = time.monotonic()
        if now - self._ok_at < HEALTH_CACHE:
            return True
        try:
            await asyncio.wait_for(self._redis.ping(), self._timeout)
        except (TimeoutError, RedisError, OSError):
            return False
        self._ok_at = now
        return True


class RedisStore:
    def __init__(self, config: RedisConfig, cookie_name: str, max_life: float, sealer: Sealer,
                 clock: Callable[[], float] = time.time, client: Any = None,
                 idle_timeout: float | None = None) -> None:
        self.config = config
        self._idle = idle_timeout
        self.name = cookie_name
        self._aad = cookie_name.encode()
        self._max_life = max_life
        self._sealer = sealer
        self._clock = clock
        self._redis = client if client is not None else connect(config)
        self._prefix = config.key_prefix
        self._health = _Health(self._redis, config.timeout)
        self._session_keys: OrderedDict[str, bytes] = OrderedDict()

    def _remember(self, session_id: str, key: bytes) -> None:
        self._session_keys[session_id] = key
        self._session_keys.move_to_end(session_id)
        while len(self._session_keys) > KEYS_REMEMBERED:
            self._session_keys.popitem(last=False)

    # -- keys and tickets ----------------------------------------------------------------------

    def _key(self, kind: str, value: str) -> str:
        return f"{self._prefix}{kind}:{value}"

    def _index(self, kind: str, value: str) -> str:
        """Index keys name a keyed hash of the ``sub``/``sid``: a dump shows no user identifiers, and
        hashing guessed user names does not find them either."""
        return f"{self._prefix}{kind}:{self._sealer.blind(value)}"

    def _open_ticket(self, cookies: Mapping[str, str]) -> tuple[str, bytes] | None:
        raw = cookies.get(self.name)
        if raw is None:
            return None
        try:
            data = json.loads(self._sealer.open(raw, self._aad))
            return str(data["i"]), b64url_decode(data["k"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CookieError("the session ticket is not in the expected shape") from exc

    def _ticket(self, session_id: str, key: bytes) -> str:
        return self._sealer.seal(json.dumps({"i": session_id, "k": b64url_encode(key)}).encode(), self._aad)

    # -- the store protocol --------------------------------------------------------------------

    def owned_names(self, cookies: Mapping[str, str]) -> list[str]:
        return [self.name] if self.name in cookies else []

    def session_id(self, cookies: Mapping[str, str]) -> str | None:
        ticket = self._safe_ticket(cookies)
        return ticket[0] if ticket is not None else None

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        ticket = self._open_ticket(cookies)
        if ticket is None:
            return None
        if self._idle is None:
            session = await self._get(*ticket)
        else:
            session = await self._get_with_use(*ticket)
        if session is None:
            raise SessionWasEnded("the session no longer exists in Redis (expired, idle, signed out or revoked)")
        self._remember(*ticket)
        return session

    async def _get_with_use(self, session_id: str, key: bytes) -> Session | None:
        """The session, and when its use was last recorded, told by its key's TTL: a use set it to the
        idle window, so the time since is what the window lost. A TTL at the session's absolute end
        (which caps every slide) means no use could extend it any more: recorded as now. A TTL longer
        than the window was set before the idle timeout was: counted from sign-in, as the cookie store
        counts a cookie without a recorded use; None when that is longer ago than the window."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._key("s", session_id))
        pipe.pttl(self._key("s", session_id))
        with _reachable():
            sealed, left_ms = await pipe.execute()
        session = self._opened(session_id, key, sealed)
        if session is None or self._idle is None:
            return session
        now, left, window = self._clock(), max(0.0, left_ms / 1000), idle_window(self._idle)
        if left > window + _TTL_SLACK:          # stored before the idle timeout was set: no use recorded,
            seen = session.created_at           # so, as a cookie without one, last used at sign-in
        elif left >= session.created_at + self._max_life - now - _TTL_SLACK:
            seen = now
        else:
            seen = now - (window - left)
        session = replace(session, last_seen=seen)
        return None if session.idle_expired(self._idle, now) else session

    async def _get(self, session_id: str, key: bytes) -> Session | None:
        with _reachable():
            sealed = await self._redis.get(self._key("s", session_id))
        return self._opened(session_id, key, sealed)

    def _opened(self, session_id: str, key: bytes, sealed: bytes | str | None) -> Session | None:
        if sealed is None:
            return None
        sealed = sealed.decode() if isinstance(sealed, bytes) else sealed
        if sealed == TOMBSTONE:
            return None
        plain = Sealer([key]).open(sealed, session_id.encode())
        return Session.from_bytes(plain)

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]:
        """Store the session; the ticket cookie is new only when the session is (a new sign-in).

        Raises ``SessionWasEnded`` when the session has ended meanwhile (its key is a tombstone, or a
        refresh finds it gone): the caller clears the browser's cookie instead.
        """
        ticket = self._safe_ticket(cookies)
        new = ticket is None or ticket[0] != session.id
        if new:
            ticket = (session.id or random_token(16), secrets.token_bytes(32))
        assert ticket is not None
        session_id, key = ticket
        await self._put(session_id, key, session, new=new)
        self._remember(session_id, key)
        return [(self.name, cookies[self.name] if not new else self._ticket(session_id, key))]

    def _safe_ticket(self, cookies: Mapping[str, str]) -> tuple[str, bytes] | None:
        try:
            return self._open_ticket(cookies)
        except CookieError:
            return None

    async def seen(self, session: Session, now: float) -> Session | None:
        """Record a use: slide the key's TTL to the idle window (capped by the absolute end). The session
        and the ticket stay as they are (None: no cookie to write)."""
        if self._idle is not None and session.id:
            try:
                await self._redis.eval(_TOUCH, 1, self._key("s", session.id), self._ttl_ms(session, now), TOMBSTONE,
                                       int(idle_window(self._idle) * 1000) + 1000)
            except RedisError as exc:      # the session was just read: serve it; the next request records the use
                log.warning("session use not recorded in Redis (%s); the next request tries again", type(exc).__name__)
        return None

    def _ttl_ms(self, session: Session, used: float) -> int:
        """The key's life from now: to the session's absolute end, or with an idle timeout to the end of
        the idle window of a use at ``used`` if sooner."""
        now = self._clock()
        end = session.created_at + self._max_life
        if self._idle is not None:
            end = min(end, used + idle_window(self._idle))
        return max(1000, int((end - now) * 1000))

    async def _put(self, session_id: str, key: bytes, session: Session, *, new: bool) -> None:
        ttl = self._ttl_ms(session, self._clock())
        # last_seen is the key's TTL here, never the sealed value: a save must not look like a use.
        sealed = Sealer([key]).seal(replace(session, last_seen=None).to_bytes(), session_id.encode())
        with _reachable():
            saved = await self._redis.eval(_SAVE, 1, self._key("s", session_id), sealed, ttl,
                                           "new" if new else "update", TOMBSTONE)
            if not saved:
                raise SessionWasEnded("the session ended while this request was in flight; not saved again")
            if new:
                await self._index_session(session_id, session)

    async def _index_session(self, session_id: str, session: Session) -> None:
        """Put a new session in its ``sid``/``sub`` sets, and remember which (``ix:``) for its end.

        Each sign-in renews its sets' TTL, so a set would outlive the sessions it names: the ones that
        expired meanwhile are taken out first (a sign-in is rare; the set is one user's sessions)."""
        life = int(self._max_life)
        indexes = [(kind, value) for kind, value in (("sid", session.sid), ("sub", session.identity.sub)) if value]
        for kind, value in indexes:
            await self._prune(self._index(kind, value))
        pipe = self._redis.pipeline(transaction=False)
        for kind, value in indexes:
            index = self._index(kind, value)
            pipe.sadd(index, session_id)
            pipe.expire(index, life)
            pipe.sadd(self._key("ix", session_id), index)
        pipe.expire(self._key("ix", session_id), life)
        await pipe.execute()

    async def _prune(self, index: str) -> None:
        """Take the sessions that no longer exist (expired) out of ``index``."""
        members = [_text(m) for m in await self._redis.smembers(index)]
        if not members:
            return
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.exists(self._key("s", member))
        gone = [m for m, alive in zip(members, await pipe.execute(), strict=False) if not alive]
        if gone:
            await self._redis.srem(index, *gone)

    @contextlib.asynccontextmanager
    async def refresh_lock(self, session: Session) -> AsyncIterator[None]:
        """Hold the session's refresh lock; waits while another process holds it (up to its expiry).

        The lock lives ``lock_timeout`` and is extended every third of it while its holder runs: a
        refresh grant sent to a slow provider is awaited for up to ``refresh.GRANT_CAP``, and must not
        lose the lock meanwhile (another replica would send the refresh token again, and a provider
        that rotates refuses the second use), while a crashed holder still blocks nobody for longer
        than ``lock_timeout``."""
        key, token = self._key("lock", session.id), random_token(12)
        lease_ms = int(self.config.lock_timeout * 1000)
        deadline = time.monotonic() + self.config.lock_timeout * 1.5
        with _reachable():
            while not await self._redis.set(key, token, nx=True, px=lease_ms):
                if time.monotonic() > deadline:
                    raise StoreUnavailable("Another process holds this session's refresh lock for too long.")
                await asyncio.sleep(LOCK_POLL)
        keeper = asyncio.create_task(self._keep_lock(key, token, lease_ms))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(RedisError):
                await self._redis.eval(_RELEASE, 1, key, token)

    async def _keep_lock(self, key: str, token: str, lease_ms: int) -> None:
        """Extend our refresh lock every third of its lease until cancelled or no longer ours."""
        while True:
            await asyncio.sleep(lease_ms / 3000)
            try:
                if not await self._redis.eval(_EXTEND, 1, key, token, lease_ms):
                    return
            except RedisError:
                continue                     # Redis away for a moment: try again at the next third

    async def reload(self, session: Session) -> Session | None:
        """The session as Redis has it now (another replica may have refreshed it); None once it ended.

        Without its key (it left the bounded ``_session_keys``, as a WebSocket's long-lived session may)
        the tokens cannot be read, but whether it still exists can: an ended session is never refreshed.
        """
        key = self._session_keys.get(session.id)
        if key is not None:
            return await self._get(session.id, key)
        if not session.id:                  # sealed before sessions had ids: stored under another name
            return session
        with _reachable():
            current = await self._redis.get(self._key("s", session.id))
        return None if current is None or _text(current) == TOMBSTONE else session

    async def update(self, session: Session) -> None:
        """Store refreshed tokens under the session's existing ticket (before the lock is released)."""
        key = self._session_keys.get(session.id)
        if key is not None:
            try:
                await self._put(session.id, key, session, new=False)
            except SessionWasEnded:
                # Ended during the refresh: nothing is written; the response's save refuses again
                # and clears the browser's cookie.
                return

    async def record_end(self, end: SessionEnd) -> int:
        """Tombstone the sessions ``end`` names (its id, and every session in its ``sid``/``sub`` sets),
        take them out of their index sets; the number of live sessions it ended."""
        ttl = max(1, int(end.ttl))
        ended = 0
        with _reachable():
            ids = {end.session_id} if end.session_id else set()
            for kind, value in (("sid", end.sid), ("sub", end.sub)):
                if value:
                    index = self._index(kind, value)
                    await self._prune(index)         # expired ones need no tombstone; live ones leave below
                    ids.update(_text(m) for m in await self._redis.smembers(index))
            for session_id in ids:
                ended += int(await self._redis.eval(_END, 1, self._key("s", session_id), TOMBSTONE, ttl))
                await self._unindex(session_id)
        return ended

    async def _unindex(self, session_id: str) -> None:
        marker = self._key("ix", session_id)
        indexes = [_text(i) for i in await self._redis.smembers(marker)]
        pipe = self._redis.pipeline(transaction=False)
        for index in indexes:
            pipe.srem(index, session_id)
        pipe.delete(marker)
        await pipe.execute()

    async def first_use(self, token_id: str, ttl: float) -> bool:
        """True the first time a logout token's ``jti`` is seen (SET NX), across every replica."""
        with _reachable():
            return bool(await self._redis.set(self._index("jti", token_id), b"1", nx=True, ex=max(1, int(ttl))))

    async def healthy(self) -> bool:
        return await self._health.check()

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisDenylist:
    """The cookie store's denylist kept in Redis, so every replica honours an end: ended session ids,
    ``sid``s and ``sub``s (keyed names, as the Redis store's indexes), each for the end's ttl."""

    def __init__(self, config: RedisConfig, blind: Callable[[str], str], clock: Callable[[], float] = time.time,
                 client: Any = None) -> None:
        self._redis = client if client is not None else connect(config)
        self._prefix = config.key_prefix
        self._blind = blind
        self._clock = clock
        self._health = _Health(self._redis, config.timeout)

    def _key(self, kind: str, value: str) -> str:
        return f"{self._prefix}deny:{kind}:{self._blind(value)}"

    async def record(self, end: SessionEnd) -> None:
        """Each name the end gives, with its time; a later end already there is kept (ends handled by
        several replicas reach Redis in any order, and an earlier one must not undo a later one)."""
        pipe = self._redis.pipeline(transaction=False)
        for kind, value in (("id", end.session_id), ("sid", end.sid), ("sub", end.sub)):
            if value:
                pipe.eval(_LATEST, 1, self._key(kind, value), repr(end.at), max(1, int(end.ttl)))
        with _reachable():
            await pipe.execute()

    async def ended(self, session: Session) -> bool:
        """One round trip for the three names a session can be ended by."""
        pipe = self._redis.pipeline(transaction=False)
        for kind, value in (("id", session.id), ("sid", session.sid), ("sub", session.identity.sub)):
            pipe.get(self._key(kind, value or ""))
        with _reachable():
            by_id, by_sid, since = await pipe.execute()
        # A logout by sid or sub ends the sessions that existed then, not later sign-ins.
        return (bool(session.id) and by_id is not None) \
            or (bool(session.sid) and by_sid is not None and session.created_at <= float(by_sid)) \
            or (since is not None and session.created_at <= float(since))

    async def first_use(self, token_id: str, ttl: float) -> bool:
        with _reachable():
            return bool(await self._redis.set(self._key("jti", token_id), b"1", nx=True, ex=max(1, int(ttl))))

    async def healthy(self) -> bool:
        return await self._health.check()

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.aclose()
