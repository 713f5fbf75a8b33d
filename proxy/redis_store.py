"""Sessions in Redis: the cookie holds a ticket, Redis holds only ciphertext.

The ticket is ``{session id, per-session key}``, sealed like any cookie (cookie secret, cookie name as
associated data). Redis stores the session sealed under the per-session key, keyed by the id, with a
TTL equal to the session's remaining life. So a dump of Redis reveals no token (the keys are only in
browsers), and a cookie alone reveals no token (the tokens are only in Redis). oauth2-proxy's
``ticket.go`` does the same; aiohttp-session's Redis store does not (plain text).

Refresh across replicas takes a short lock (``SET NX PX``, released only by its holder with a
compare-and-delete script): lock → reload → still due? → refresh → save → unlock. A crashed holder
blocks nobody longer than ``lock_timeout``. Back-channel logout finds sessions through ``sid`` and
``sub`` index sets. Every Redis failure becomes ``StoreUnavailable`` (a 503), never a lost session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from .config import RedisConfig
from .crypto import Sealer, b64url_decode, b64url_encode, fingerprint, random_token
from .errors import CookieError
from .session import Session
from .store import StoreUnavailable

# How often a waiter looks whether another replica's refresh lock is gone.
LOCK_POLL = 0.05
# /ready asks Redis at most this often.
HEALTH_CACHE = 1.0
# Per-session keys remembered for reloading during a refresh (a refresh always follows a load here).
KEYS_REMEMBERED = 10_000
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def connect(config: RedisConfig) -> Any:
    """A redis-py asyncio client for a single server, a Sentinel-managed master, or a Cluster.

    The password (``session.redis.password``) goes to the data nodes in every topology; sentinels are
    addressed by their URLs' host and port (default 26379) and get TLS when their URL is rediss://.
    """
    timeouts = {"socket_connect_timeout": config.connect_timeout, "socket_timeout": config.timeout}
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
        except (RedisError, OSError, asyncio.TimeoutError):
            return False
        self._ok_at = now
        return True


class RedisStore:
    def __init__(self, config: RedisConfig, cookie_name: str, max_life: float, sealer: Sealer,
                 clock: Callable[[], float] = time.time, client: Any = None) -> None:
        self.config = config
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
        """Index keys name a hash of the ``sub``/``sid``, so a dump shows no user identifiers."""
        return f"{self._prefix}{kind}:{fingerprint(value)}"

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

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        ticket = self._open_ticket(cookies)
        if ticket is None:
            return None
        session = await self._get(*ticket)
        if session is None:
            raise CookieError("the session no longer exists in Redis (expired, signed out or revoked)")
        self._remember(*ticket)
        return session

    async def _get(self, session_id: str, key: bytes) -> Session | None:
        with _reachable():
            sealed = await self._redis.get(self._key("s", session_id))
        if sealed is None:
            return None
        plain = Sealer([key]).open(sealed.decode() if isinstance(sealed, bytes) else sealed, session_id.encode())
        return Session.from_bytes(plain)

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]:
        """Store the session; the ticket cookie is new only when the session is (a new sign-in)."""
        ticket = self._safe_ticket(cookies)
        if ticket is None or ticket[0] != session.id:
            ticket = (session.id or random_token(16), secrets.token_bytes(32))
        session_id, key = ticket
        await self._put(session_id, key, session)
        self._remember(session_id, key)
        same = ticket == self._safe_ticket(cookies)
        return [(self.name, cookies[self.name] if same else self._ticket(session_id, key))]

    def _safe_ticket(self, cookies: Mapping[str, str]) -> tuple[str, bytes] | None:
        try:
            return self._open_ticket(cookies)
        except CookieError:
            return None

    async def _put(self, session_id: str, key: bytes, session: Session) -> None:
        ttl = max(1, int(session.created_at + self._max_life - self._clock()))
        sealed = Sealer([key]).seal(session.to_bytes(), session_id.encode())
        with _reachable():
            await self._redis.set(self._key("s", session_id), sealed, ex=ttl)
            for kind, value in (("sid", session.sid), ("sub", session.identity.sub)):
                if value:
                    index = self._index(kind, value)
                    await self._redis.sadd(index, session_id)
                    await self._redis.expire(index, int(self._max_life))

    async def delete(self, cookies: Mapping[str, str]) -> None:
        try:
            ticket = self._open_ticket(cookies)
        except CookieError:
            return
        if ticket is not None:
            with _reachable():
                await self._redis.delete(self._key("s", ticket[0]))

    @contextlib.asynccontextmanager
    async def refresh_lock(self, session: Session) -> AsyncIterator[None]:
        """Hold the session's refresh lock; waits while another process holds it (up to its expiry)."""
        key, token = self._key("lock", session.id), random_token(12)
        deadline = time.monotonic() + self.config.lock_timeout * 1.5
        with _reachable():
            while not await self._redis.set(key, token, nx=True, px=int(self.config.lock_timeout * 1000)):
                if time.monotonic() > deadline:
                    raise StoreUnavailable("Another process holds this session's refresh lock for too long.")
                await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            with contextlib.suppress(RedisError):
                await self._redis.eval(_RELEASE, 1, key, token)

    async def reload(self, session: Session) -> Session | None:
        """The session as Redis has it now (another replica may have refreshed it)."""
        key = self._session_keys.get(session.id)
        return session if key is None else await self._get(session.id, key)

    async def update(self, session: Session) -> None:
        """Store refreshed tokens under the session's existing ticket (before the lock is released)."""
        key = self._session_keys.get(session.id)
        if key is not None:
            await self._put(session.id, key, session)

    async def end_sessions(self, *, sid: str | None, sub: str | None) -> int:
        """Delete every session indexed under ``sid`` or ``sub`` (back-channel logout)."""
        ended = 0
        with _reachable():
            for kind, value in (("sid", sid), ("sub", sub)):
                if not value:
                    continue
                index = self._index(kind, value)
                ids = await self._redis.smembers(index)
                for session_id in ids:
                    sid_text = session_id.decode() if isinstance(session_id, bytes) else session_id
                    ended += await self._redis.delete(self._key("s", sid_text))
                await self._redis.delete(index)
        return ended

    async def first_use(self, token_id: str, ttl: float) -> bool:
        """True the first time a logout token's ``jti`` is seen (SET NX), across every replica."""
        with _reachable():
            return bool(await self._redis.set(self._index("jti", token_id), b"1", nx=True, ex=max(1, int(ttl))))

    async def healthy(self) -> bool:
        return await self._health.check()

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.aclose()


class RedisDenylist:
    """The cookie store's logout denylist kept in Redis, so every replica honours a back-channel logout."""

    def __init__(self, config: RedisConfig, clock: Callable[[], float] = time.time, client: Any = None) -> None:
        self._redis = client if client is not None else connect(config)
        self._prefix = config.key_prefix
        self._clock = clock
        self._health = _Health(self._redis, config.timeout)

    def _key(self, kind: str, value: str) -> str:
        return f"{self._prefix}deny:{kind}:{fingerprint(value)}"

    async def add(self, *, sid: str | None, sub: str | None, ttl: float) -> None:
        with _reachable():
            for kind, value in (("sid", sid), ("sub", sub)):
                if value:
                    await self._redis.set(self._key(kind, value), repr(self._clock()), ex=max(1, int(ttl)))

    async def ended(self, session: Session) -> bool:
        with _reachable():
            if session.sid and await self._redis.exists(self._key("sid", session.sid)):
                return True
            since = await self._redis.get(self._key("sub", session.identity.sub))
        # A sub-wide logout ends the sessions that existed then, not later sign-ins.
        return since is not None and session.created_at <= float(since)

    async def first_use(self, token_id: str, ttl: float) -> bool:
        with _reachable():
            return bool(await self._redis.set(self._key("jti", token_id), b"1", nx=True, ex=max(1, int(ttl))))

    async def healthy(self) -> bool:
        return await self._health.check()

    async def close(self) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.aclose()
