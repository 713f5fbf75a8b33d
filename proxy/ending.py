"""How a session ends: one event, one owner, honoured by every holder of the session.

A session ends on sign-out, on back-channel logout (OpenID Connect Back-Channel Logout 1.0 §2.7), at
its expiry, when the provider refuses its refresh (RFC 6749 §5.2 ``invalid_grant``), when it no
longer fits in cookies and when a step-up sign-in replaces it (``stepup.py``). Whatever the reason,
the end is a ``SessionEnd`` and goes through ``SessionEnds.end``, which

1. applies it in this process: the in-memory record of recent ends (``MemoryDenylist``), which the
   session cookie writer consults so a request that began before the end cannot write the session
   back, and every holder registered here — the WebSocket registry closes the session's sockets,
   which stops their refresh watchers;
2. publishes it through the ``Fanout`` to the other processes that may hold the session (the other
   workers of this host). They ``apply`` it: local effects only, never published again;
3. records it in the session store, final: the Redis store overwrites the session with a tombstone
   that every later save checks atomically; the cookie store puts it in its denylist (in Redis when
   one is configured), for as long as a cookie could live.

No other module closes sockets or clears sessions its own way. A store that cannot be reached does not
stop the local effects or the fan-out: ``end`` does those first and raises ``StoreUnavailable`` last,
so the caller can say the server side could not be reached — and keeps trying to record it in the
background until the store takes it or the end no longer matters (``_record_later``).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from aiohttp import web

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from .model import Session
    from .store import MemoryDenylist, SessionStore

log = logging.getLogger("authproxy.ending")

# An end the store could not take is retried, first after RETRY_FIRST seconds, backing off to RETRY_MAX
# (short: when Redis is back, a replica must not load the session before its tombstone lands).
RETRY_FIRST = 0.25
RETRY_MAX = 2.0
UNRECORDED_MAX = 10_000


class Reason(enum.StrEnum):
    """Why a session ended (the WebSocket close reason and the log say it)."""

    SIGN_OUT = "sign_out"
    BACKCHANNEL = "backchannel_logout"
    FRONTCHANNEL = "frontchannel_logout"
    EXPIRY = "expiry"
    REFRESH_REFUSED = "refresh_refused"
    COOKIE_LIMIT = "cookie_limit"
    STEP_UP = "step_up"                   # replaced by a stronger or more recent sign-in (stepup.py)


_FIELDS = {"r": "reason", "at": "at", "ttl": "ttl", "id": "session_id", "sid": "sid", "sub": "sub"}


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """One end: of one session (``session_id``), or of the sessions created at or before ``at`` of an
    OIDC session (``sid``) or of a user (``sub``): a later sign-in is not ended."""

    reason: Reason
    at: float                       # epoch seconds when it ended
    ttl: float                      # how long every holder must remember it (the longest a cookie could live)
    session_id: str | None = None   # Session.id: this one session
    sid: str | None = None          # OIDC sid: every session with it
    sub: str | None = None          # every session of this user created at or before `at`

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"r": self.reason.value, "at": self.at, "ttl": self.ttl}
        for short in ("id", "sid", "sub"):
            value = getattr(self, _FIELDS[short])
            if value is not None:
                data[short] = value
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionEnd:
        """Strict: an unknown field, a wrong type, a non-finite time or an end naming no session is a ValueError."""
        try:
            data = json.loads(raw, object_pairs_hook=_no_repeats)
        except (ValueError, RecursionError) as exc:        # UnicodeDecodeError is a ValueError
            raise ValueError("a session end is not JSON") from exc
        if not isinstance(data, dict) or not set(data) <= set(_FIELDS) or not {"r", "at", "ttl"} <= set(data):
            raise ValueError("a session end has missing or unknown fields")
        reason = Reason(data["r"]) if isinstance(data["r"], str) else None
        at, ttl = data["at"], data["ttl"]
        if reason is None or not _finite(at) or not _finite(ttl) or ttl <= 0:
            raise ValueError("a session end has a bad reason, time or ttl")
        names = {short: data.get(short) for short in ("id", "sid", "sub")}
        if any(v is not None and (not isinstance(v, str) or not v) for v in names.values()) \
                or not any(names.values()):
            raise ValueError("a session end must name a session, an OIDC sid or a user")
        return cls(reason=reason, at=float(at), ttl=float(ttl), session_id=names["id"], sid=names["sid"],
                   sub=names["sub"])

    def covers(self, session: Session) -> bool:
        """Whether ``session`` is one this end ended. Sessions sealed before ids existed all have the
        id "": no end names "", so such a session is ended only by its sid or sub."""
        return bool((self.session_id and session.id == self.session_id)
                    or (self.sid and session.sid == self.sid and session.created_at <= self.at)
                    or (self.sub and session.identity.sub == self.sub and session.created_at <= self.at))


def _finite(value: object) -> bool:
    """A JSON number that is a finite float (an integer of 400 digits is not: it overflows)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object naming a field twice is read two ways by different parsers: refused."""
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a session end names a field twice")
    return data


class Fanout(Protocol):
    """Carries ends to the other processes that may hold the session (workers of this host, replicas)."""

    async def publish(self, end: SessionEnd) -> None: ...

    def subscribe(self, receive: Callable[[SessionEnd], None]) -> None:
        """``receive`` is called (on the event loop) for ends published by OTHER processes, and on
        (re)connect for every end still within its ttl, so a restarted worker learns the current ends."""
        ...

    def unsubscribe(self, receive: Callable[[SessionEnd], None]) -> None:
        """Stop calling ``receive`` (an app replaced by a reload lets go of the fan-out it shared)."""
        ...

    async def close(self) -> None: ...


class LocalFanout:
    """One process: nobody else to tell. ``publish`` does nothing, ``subscribe`` stores nothing."""

    async def publish(self, end: SessionEnd) -> None:
        return None

    def subscribe(self, receive: Callable[[SessionEnd], None]) -> None:
        return None

    def unsubscribe(self, receive: Callable[[SessionEnd], None]) -> None:
        return None

    async def close(self) -> None:
        return None


Holder = Callable[[SessionEnd], object]
"""Something that holds sessions in this process and must let go of an ended one (a ``Holds.session_ended``)."""


class Held(Protocol):
    """One connection serving a session: a relayed WebSocket, a streamed response."""

    @property
    def session_id(self) -> str:
        """The id of the session served."""

    @property
    def session(self) -> Session | None:
        """The session as this connection last saw it (a refresh may have replaced it)."""

    def let_go(self, end: SessionEnd) -> None:
        """Stop serving the session now (close the socket, cut the stream)."""


H = TypeVar("H", bound=Held)


class Holds(Generic[H]):
    """What this process serves each session with, by session id, so that an end reaches all of it at once
    (registered with ``SessionEnds.hold``). ``what`` names them in the log."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._by_session: dict[str, set[H]] = {}

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_session.values())

    def __iter__(self) -> Iterator[H]:
        return iter([held for group in self._by_session.values() for held in group])

    def count(self, session_id: str) -> int:
        """How many of one session's are open (or being opened) now."""
        return len(self._by_session.get(session_id, ()))

    def add(self, held: H) -> None:
        self._by_session.setdefault(held.session_id, set()).add(held)

    def discard(self, held: H) -> None:
        group = self._by_session.get(held.session_id)
        if group is not None:
            group.discard(held)
            if not group:
                del self._by_session[held.session_id]

    def session_ended(self, end: SessionEnd) -> int:
        """A ``SessionEnds`` holder: let go of everything of the sessions ``end`` covers; how many."""
        if end.sid is None and end.sub is None:       # one session: its group (id "" names no session)
            ending = list(self._by_session.get(end.session_id, ())) if end.session_id else []
        else:
            ending = [held for group in self._by_session.values() for held in group
                      if held.session is not None and end.covers(held.session)]
        for held in ending:
            held.let_go(end)
        if ending:
            log.info("ending %d %s(s): %s", len(ending), self.what, end.reason.value)
        return len(ending)


class SessionEnds:
    """THE way a session ends in this process (see the module docstring)."""

    def __init__(self, store: SessionStore, local: MemoryDenylist, fanout: Fanout, *,
                 ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.local = local
        self._fanout = fanout
        self._ttl = ttl
        self._clock = clock
        self._holders: list[Holder] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._unrecorded: dict[tuple[str | None, ...], asyncio.Task[None]] = {}

    def hold(self, holder: Holder) -> None:
        """Call ``holder`` with every end applied in this process, ours or another's."""
        self._holders.append(holder)

    def new(self, reason: Reason, *, session_id: str | None = None, sid: str | None = None,
            sub: str | None = None) -> SessionEnd:
        """An end happening now, remembered for as long as a session cookie could live."""
        return SessionEnd(reason=reason, at=self._clock(), ttl=self._ttl, session_id=session_id or None,
                          sid=sid or None, sub=sub or None)

    async def end(self, end: SessionEnd) -> int:
        """Apply, record and publish ``end``; the number of stored sessions it ended (Redis store).

        Published before it is recorded, so the other workers need not wait on a slow store. Raises
        ``StoreUnavailable`` (after applying and publishing) when the store cannot record it. An end that
        names nothing (a session sealed before sessions had ids) has nothing to do.
        """
        if not (end.session_id or end.sid or end.sub):
            return 0
        log.info("session ended: %s (%s)", end.reason.value,
                 "session" if end.session_id else "sid" if end.sid else "user")
        self.apply(end)
        try:
            await self._fanout.publish(end)
        except Exception:                          # the end still holds here and in the store
            log.exception("a session end (%s) could not be published to the other processes", end.reason.value)
        try:
            return await self.store.record_end(end)
        except StoreUnavailable:
            self._record_later(end)
            raise

    def _record_later(self, end: SessionEnd) -> None:
        """Keep trying to record ``end`` until the store takes it or no cookie it covers can live.

        Until then the end holds only on this host (applied and fanned out); a replica elsewhere, or
        this host after the store comes back, would load the session from the store again. The same
        end asked again (a sign-out repeated with a copy of the cookie) is retried once, not twice.
        """
        key = (end.session_id, end.sid, end.sub)
        if key in self._unrecorded or len(self._unrecorded) >= UNRECORDED_MAX:
            return
        task = asyncio.create_task(self._keep_recording(end))
        self._unrecorded[key] = task
        task.add_done_callback(lambda _: self._unrecorded.pop(key, None))

    async def _keep_recording(self, end: SessionEnd) -> None:
        delay = RETRY_FIRST
        while self._clock() < end.at + end.ttl:
            await asyncio.sleep(delay)
            try:
                await self.store.record_end(end)
            except StoreUnavailable:
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception:
                log.exception("a session end (%s) could not be recorded; not retried", end.reason.value)
                return
            log.info("session end recorded once the store was back: %s", end.reason.value)
            return
        log.warning("a session end (%s) was never recorded: the store stayed down until it no longer mattered",
                    end.reason.value)

    @property
    def unrecorded(self) -> int:
        """Ends applied here that the store has not taken yet (retried in the background)."""
        return len(self._unrecorded)

    async def close(self) -> None:
        """Stop retrying (the app is going away); an end still unrecorded is logged."""
        tasks = list(self._unrecorded.values())
        if tasks:
            log.warning("%d session end(s) not yet recorded in the store are given up at shutdown",
                        len(self._unrecorded))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def end_soon(self, end: SessionEnd) -> None:
        """``end`` in a task of its own, for a caller about to be cancelled (a WebSocket's watcher ends
        its socket, and the socket's relay then cancels the watcher): the end is still recorded."""
        task = asyncio.create_task(self._end_logged(end))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _end_logged(self, end: SessionEnd) -> None:
        try:
            await self.end(end)
        except StoreUnavailable as exc:
            log.warning("a session end (%s) was not recorded in the store: %s", end.reason.value, exc)

    def apply(self, end: SessionEnd) -> None:
        """This process's part only: remember the end, and let every holder let go (no re-publish).

        An end another process sent is taken as happening no later than now and lasting no longer than
        a cookie lives here: one dated ahead (a peer's clock, a bug) would end later sign-ins of its
        user, and one with a vast ttl would be kept for ever.
        """
        now = self._clock()
        if end.at > now or end.ttl > self._ttl:
            end = replace(end, at=min(end.at, now), ttl=min(end.ttl, self._ttl))
        self.local.note(end)
        for holder in self._holders:
            try:
                holder(end)
            except Exception:                      # one holder's bug must not keep the others from ending it
                log.exception("a holder failed to apply a session end (%s)", end.reason.value)

    def ended(self, session: Session) -> bool:
        """Whether an end known in this process covers ``session`` (no I/O: for the response path)."""
        return self.local.covers(session)


ENDS = web.AppKey("authproxy_session_ends", SessionEnds)
FANOUT = web.AppKey("authproxy_fanout", Fanout)
