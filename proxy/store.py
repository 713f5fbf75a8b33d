"""Where sessions live: the store protocol, and the cookie store (the default).

Two stores pass one contract suite (``tests/contract/``):

- ``CookieStore``: the sealed session *is* the cookie (``cookies.CookieCodec``). Nothing to run,
  any number of replicas; the refresh lock is the in-process single flight in ``refresh.py``.
- ``RedisStore`` (``redis_store.py``): the cookie is only a ticket; the session, sealed under a
  key only the ticket holds, lives in Redis. Revocation, back-channel logout and one refresh
  across replicas come with it.

Either way a store answers ``load`` with a Session, None (no session) or ``CookieError`` (a bad
one, or one unused past ``cookie.idle_timeout``: the caller signs the user out), and raises
``StoreUnavailable`` when its backend is down.

With ``cookie.idle_timeout`` a request records the session's use through ``seen``, at most every
``model.touch_interval``: the cookie store rewrites ``last_seen`` inside the sealed cookie (so a
client can neither forge nor keep an older copy alive longer than its own time says); the Redis store
slides the session key's TTL instead and never rewrites the session for it, so a use can never put
back tokens another replica has just refreshed.

An end (``ending.SessionEnd``) is final in every store (``record_end``): no later ``save`` brings the
session back — ``save`` raises ``SessionWasEnded`` instead. The Redis store overwrites the session with
a tombstone its save script checks; the cookie store cannot reach cookies, so it keeps a denylist of
ended session ids, ``sid``s and ``sub``s for as long as a cookie could live: in Redis when one is
configured (every replica honours it), else in this process's memory (``MemoryDenylist``, which the
host's other workers fill from the fan-out of ends).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from .errors import CookieError, SessionWasEnded

if TYPE_CHECKING:
    from .cookies import CookieCodec
    from .ending import SessionEnd
    from .model import Session


class SessionStore(Protocol):
    def owned_names(self, cookies: Mapping[str, str]) -> list[str]: ...

    async def load(self, cookies: Mapping[str, str]) -> Session | None: ...

    def session_id(self, cookies: Mapping[str, str]) -> str | None:
        """The id of the session these cookies name, read without I/O; None if they name none (or are
        bad). For ending a session the store cannot load: a sign-out while the backend is down."""

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]: ...

    async def seen(self, session: Session, now: float) -> Session | None: ...

    def refresh_lock(self, session: Session) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def reload(self, session: Session) -> Session | None: ...

    async def update(self, session: Session) -> None: ...

    async def record_end(self, end: SessionEnd) -> int: ...

    async def first_use(self, token_id: str, ttl: float) -> bool: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class Denylist(Protocol):
    """Ended sessions (by id, ``sid`` or ``sub``), for stores that cannot delete a session (cookies);
    and the ``jti`` of logout tokens already used, so a replayed one is refused."""

    async def record(self, end: SessionEnd) -> None: ...

    async def ended(self, session: Session) -> bool: ...

    async def first_use(self, token_id: str, ttl: float) -> bool: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryDenylist:
    """Ends known to this process, kept until their ttl: the cookie store's denylist when there is no
    Redis, and every process's record of recent ends (``ending.SessionEnds.local``). Lookups are three
    dict reads, cheap enough for every request."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # "id:x" / "sid:x" / "sub:x" / "jti:x" -> (ended at, forget at)
        self._entries: dict[str, tuple[float, float]] = {}
        self._next_sweep = 0.0

    def note(self, end: SessionEnd) -> None:
        forget = end.at + end.ttl
        for key in (f"id:{end.session_id}" if end.session_id else None, f"sid:{end.sid}" if end.sid else None,
                    f"sub:{end.sub}" if end.sub else None):
            if key:
                old = self._entries.get(key)
                # A later end by sid or sub covers more sessions; keep the latest time and the longest life.
                self._entries[key] = (max(end.at, old[0]), max(forget, old[1])) if old else (end.at, forget)
        self._sweep()

    def __len__(self) -> int:
        """Entries kept, expired ones included until the next sweep."""
        return len(self._entries)

    def _sweep(self) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            self._next_sweep = now + 60.0

    def covers(self, session: Session) -> bool:
        if not self._entries:
            return False
        now = self._clock()
        by_id = self._entries.get(f"id:{session.id}") if session.id else None
        if by_id is not None and by_id[1] > now:
            return True
        # A logout by sid or sub ends the sessions that existed then, not later sign-ins (a provider
        # may keep its session, and so its sid, across one client's back-channel logout).
        for key in (f"sid:{session.sid}" if session.sid else None, f"sub:{session.identity.sub}"):
            entry = self._entries.get(key) if key else None
            if entry is not None and entry[1] > now and session.created_at <= entry[0]:
                return True
        return False

    async def record(self, end: SessionEnd) -> None:
        self.note(end)

    async def ended(self, session: Session) -> bool:
        return self.covers(session)

    async def first_use(self, token_id: str, ttl: float) -> bool:
        now = self._clock()
        key = f"jti:{token_id}"
        if key in self._entries and self._entries[key][1] > now:
            return False
        self._entries[key] = (now, now + ttl)
        return True

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class CookieStore:
    """The session sealed into the browser's cookies (``cookies.CookieCodec``)."""

    def __init__(self, codec: CookieCodec, denylist: Denylist) -> None:
        self.codec = codec
        self.denylist = denylist

    def owned_names(self, cookies: Mapping[str, str]) -> list[str]:
        return self.codec.owned_names(cookies)

    def session_id(self, cookies: Mapping[str, str]) -> str | None:
        try:
            session = self.codec.load(cookies)
        except CookieError:
            return None
        return session.id if session is not None else None

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        session = self.codec.load(cookies)
        if session is not None and await self.denylist.ended(session):
            raise SessionWasEnded("the session was ended (signed out, logged out at the provider or refused)")
        return session

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]:
        if await self.denylist.ended(session):
            raise SessionWasEnded("the session was ended while this request was in flight")
        return self.codec.dump(session)

    async def seen(self, session: Session, now: float) -> Session | None:
        """The session to write back with its new last-seen time: the cookie is where it is kept."""
        return replace(session, last_seen=now)

    @contextlib.asynccontextmanager
    async def refresh_lock(self, session: Session) -> AsyncIterator[None]:
        yield          # the cookie is per browser: the in-process single flight is the lock

    async def reload(self, session: Session) -> Session | None:
        """The session, or None once it has ended: a WebSocket's watcher refreshing a session ended on
        another replica learns it here (through the Redis denylist) instead of spending its grant."""
        return None if await self.denylist.ended(session) else session

    async def update(self, session: Session) -> None:
        return None        # the new cookie goes out with the response

    async def record_end(self, end: SessionEnd) -> int:
        await self.denylist.record(end)
        return 0

    async def first_use(self, token_id: str, ttl: float) -> bool:
        return await self.denylist.first_use(token_id, ttl)

    async def healthy(self) -> bool:
        return await self.denylist.healthy()

    async def close(self) -> None:
        await self.denylist.close()
