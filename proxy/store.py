"""Where sessions live: the store protocol, and the cookie store (the default).

Two stores pass one contract suite (``tests/contract/``):

- ``CookieStore``: the sealed session *is* the cookie (``cookies.CookieCodec``). Nothing to run,
  any number of replicas; the refresh lock is the in-process single flight in ``refresh.py``.
- ``RedisStore`` (``redis_store.py``): the cookie is only a ticket; the session, sealed under a
  key only the ticket holds, lives in Redis. Revocation, back-channel logout and one refresh
  across replicas come with it.

Either way a store answers ``load`` with a Session, None (no session) or ``CookieError`` (a bad
one: the caller signs the user out), and raises ``StoreUnavailable`` when its backend is down.
Back-channel logout ends sessions by ``sid``/``sub``: the Redis store deletes them; the cookie store
cannot reach cookies, so it keeps a denylist (in Redis when one is configured, else in memory).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from .cookies import CookieCodec
from .errors import AuthProxyError, CookieError
from .session import Session


class StoreUnavailable(AuthProxyError):
    """The session store cannot be reached; requests that need it get a 503 until it is back."""

    status = 503
    title = "Sessions are unavailable"


class SessionStore(Protocol):
    def owned_names(self, cookies: Mapping[str, str]) -> list[str]: ...

    async def load(self, cookies: Mapping[str, str]) -> Session | None: ...

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]: ...

    async def delete(self, cookies: Mapping[str, str]) -> None: ...

    def refresh_lock(self, session: Session) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def reload(self, session: Session) -> Session | None: ...

    async def update(self, session: Session) -> None: ...

    async def end_sessions(self, *, sid: str | None, sub: str | None) -> int: ...

    async def first_use(self, token_id: str, ttl: float) -> bool: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class Denylist(Protocol):
    """Ended ``sid``/``sub`` values, for stores that cannot delete a session (cookies); and the
    ``jti`` of logout tokens already used, so a replayed one is refused."""

    async def add(self, *, sid: str | None, sub: str | None, ttl: float) -> None: ...

    async def ended(self, session: Session) -> bool: ...

    async def first_use(self, token_id: str, ttl: float) -> bool: ...

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryDenylist:
    """In-process denylist: right for one process only (the README says so)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, float]] = {}     # "sid:x"/"sub:y" -> (ended at, forget at)

    async def add(self, *, sid: str | None, sub: str | None, ttl: float) -> None:
        now = self._clock()
        for key in (f"sid:{sid}" if sid else None, f"sub:{sub}" if sub else None):
            if key:
                self._entries[key] = (now, now + ttl)
        self._entries = {k: v for k, v in self._entries.items() if v[1] > now}

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

    async def ended(self, session: Session) -> bool:
        keys = [f"sid:{session.sid}"] if session.sid else []
        keys.append(f"sub:{session.identity.sub}")
        for key in keys:
            entry = self._entries.get(key)
            # A sub-wide logout ends the sessions that existed then, not later sign-ins.
            if entry and entry[1] > self._clock() and (key.startswith("sid:") or session.created_at <= entry[0]):
                return True
        return False


class CookieStore:
    """The session sealed into the browser's cookies (``cookies.CookieCodec``)."""

    def __init__(self, codec: CookieCodec, denylist: Denylist) -> None:
        self.codec = codec
        self.denylist = denylist

    def owned_names(self, cookies: Mapping[str, str]) -> list[str]:
        return self.codec.owned_names(cookies)

    async def load(self, cookies: Mapping[str, str]) -> Session | None:
        session = self.codec.load(cookies)
        if session is not None and await self.denylist.ended(session):
            raise CookieError("the session was ended by the provider (back-channel logout)")
        return session

    async def save(self, session: Session, cookies: Mapping[str, str]) -> list[tuple[str, str]]:
        return self.codec.dump(session)

    async def delete(self, cookies: Mapping[str, str]) -> None:
        return None

    @contextlib.asynccontextmanager
    async def refresh_lock(self, session: Session) -> AsyncIterator[None]:
        yield          # the cookie is per browser: the in-process single flight is the lock

    async def reload(self, session: Session) -> Session | None:
        return session

    async def update(self, session: Session) -> None:
        return None        # the new cookie goes out with the response

    async def end_sessions(self, *, sid: str | None, sub: str | None) -> int:
        await self.denylist.add(sid=sid, sub=sub, ttl=self.codec.config.expire)
        return 0

    async def first_use(self, token_id: str, ttl: float) -> bool:
        return await self.denylist.first_use(token_id, ttl)

    async def healthy(self) -> bool:
        return await self.denylist.healthy()

    async def close(self) -> None:
        await self.denylist.close()
