"""A worker's side of the host coordinator (``coordinator.py``): one connection, and what rides on it.

- ``HostLink``: the connection — (re)connects with backoff, matches answers to requests, and never
  makes a caller wait for a coordinator that is gone: ``lock`` then goes on unlocked (as one process
  would), ``get`` finds nothing, and messages wait to be announced on the next connection.
- ``HostRefreshes``: the cross-worker half of ``refresh.py``'s "lock → reload → still due? → refresh →
  save": a lock per refresh token, and the result, sealed with the app's ``Sealer``, for the worker
  that waited.
- ``HostFanout``: ``ending.Fanout`` over the coordinator's retained messages: every end of a session
  (``ending.SessionEnds``) reaches the other workers, and a worker that restarts.
- ``HostDenylist``: the worker's record of ends, with logout tokens' ``jti`` claimed host-wide.

Only a process started by the supervisor with ``workers: N`` (N > 1) has a link; ``workers: 1`` builds
none of this. Nothing here runs on the hot path: a request talks to the coordinator only when its
session is due for refresh, or when a session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .coordinator import Message, encode, read_frame
from .crypto import Sealer, fingerprint
from .ending import SessionEnd
from .errors import CookieError, FrameError
from .model import Session
from .store import MemoryDenylist

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("authproxy.host")

RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)   # backoff while the coordinator is (re)starting
CONNECT_GRACE = 1.0       # how long a request waits for a link that is (re)connecting before going without
ANSWER_TIMEOUT = 2.0      # a get/claim the coordinator does not answer in time finds nothing
KNOWN_MAX = 10_000        # ends remembered for announcing and deduplicating


class HostLink:
    """The worker's connection to the coordinator at ``path`` (made in the worker's event loop)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer: asyncio.StreamWriter | None = None
        self._generation = 0                      # which connection a lock was granted on
        self._connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._announce: Callable[[], list[tuple[str, float]]] = list
        self._on_message: Callable[[str], None] = lambda text: None
        self._task = asyncio.create_task(self._run())

    def carry(self, announce: Callable[[], list[tuple[str, float]]], on_message: Callable[[str], None]) -> None:
        """Who keeps the retained messages: ``announce`` lists ``(message, ttl)`` on each connect."""
        self._announce, self._on_message = announce, on_message

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path)
            except OSError:
                await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1
                continue
            failures = 0
            try:
                await self._serve(reader, writer)
            finally:
                self._drop(writer)
            await asyncio.sleep(RECONNECT_DELAYS[0])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer, self._generation = writer, self._generation + 1
        for text, ttl in self._announce():        # what a restarted coordinator lost, the workers still know
            self._send({"op": "publish", "message": text, "ttl": ttl})
        self._send({"op": "hello"})
        self._connected.set()
        log.debug("connected to the host coordinator")
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, FrameError):
            while True:
                message = await read_frame(reader)
                if "ev" in message:
                    self._deliver(str(message["ev"]))
                else:
                    future = self._pending.pop(message.get("id", -1), None)
                    if future is not None and not future.done():
                        future.set_result(message)

    def _deliver(self, text: str) -> None:
        try:
            self._on_message(text)
        except Exception:                         # a receiver's bug must not cut the worker off the host
            log.exception("a session end from the host coordinator was not handled")

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._connected.clear()
        self._writer = None
        writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_result({})
        self._pending.clear()

    def _send(self, message: Message) -> bool:
        if self._writer is None or self._writer.is_closing():
            return False
        try:
            self._writer.write(encode(message))
        except FrameError as exc:                 # too large to share: this worker keeps it to itself
            log.warning("not sent to the host coordinator: %s", exc)
            return False
        return True

    async def _ask(self, message: Message, timeout: float) -> Message:
        """The coordinator's answer, or ``{}`` if it cannot be had in time."""
        if not self._connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), CONNECT_GRACE)
        rid = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        if not self._send({**message, "id": rid}):
            self._pending.pop(rid, None)
            return {}
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return {}
        finally:
            self._pending.pop(rid, None)

    @contextlib.asynccontextmanager
    async def lock(self, name: str, lease: float) -> AsyncIterator[bool]:
        """Hold ``name`` host-wide (yields True), or go on without it (False) when the coordinator
        cannot grant it: down, or still held after ``lease`` — the caller is no worse off than one
        process alone."""
        answer = await self._ask({"op": "lock", "name": name, "lease": lease, "wait": lease}, lease + 1.0)
        held, generation = bool(answer.get("ok")), self._generation
        if not held:
            log.warning("refresh lock not shared with the other workers (host coordinator unavailable)")
        try:
            yield held
        finally:
            if held and generation == self._generation:    # a new connection's lock is not ours to free
                self._send({"op": "unlock", "name": name})

    async def get(self, key: str) -> str | None:
        value = (await self._ask({"op": "get", "key": key}, ANSWER_TIMEOUT)).get("value")
        return value if isinstance(value, str) else None

    def put(self, key: str, value: str, ttl: float) -> None:
        if ttl > 0:                               # the coordinator drops a connection that breaks the protocol
            self._send({"op": "put", "key": key, "value": value, "ttl": ttl})

    async def claim(self, key: str, ttl: float) -> bool | None:
        """True for the first claim of ``key`` host-wide, False after; None when nobody can say."""
        if ttl <= 0:
            return None
        answer = await self._ask({"op": "claim", "key": key, "ttl": ttl}, ANSWER_TIMEOUT)
        return answer.get("ok") if isinstance(answer.get("ok"), bool) else None

    def publish(self, text: str, ttl: float) -> None:
        if ttl > 0:
            self._send({"op": "publish", "message": text, "ttl": ttl})

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()


class HostRefreshes:
    """One refresh per refresh token across the host's workers, and its result for those that waited."""

    def __init__(self, link: HostLink, sealer: Sealer, lease: float) -> None:
        self._link, self._sealer, self._lease = link, sealer, lease

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[bool]:
        return self._link.lock("refresh:" + key, self._lease)

    async def recall(self, key: str) -> Session | None:
        """The session another worker refreshed from the token ``key`` names, if any."""
        sealed = await self._link.get("refresh:" + key)
        if sealed is None:
            return None
        try:
            return Session.from_bytes(self._sealer.open(sealed, _purpose(key)))
        except CookieError:
            return None                   # sealed under a key this worker no longer has: refresh anew

    def share(self, key: str, session: Session, ttl: float) -> None:
        self._link.put("refresh:" + key, self._sealer.seal(session.to_bytes(), _purpose(key)), ttl)


def _purpose(key: str) -> bytes:
    """Associated data: a result opens only under the refresh token it was stored for."""
    return b"authproxy host refresh " + key.encode("ascii")


class HostFanout:
    """``ending.Fanout`` between the workers of one host. Ends are remembered until their ttl: to
    deliver each once, and to announce them to a coordinator that restarted."""

    def __init__(self, link: HostLink, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._link, self._metrics, self._clock = link, metrics, clock
        self._known: dict[str, float] = {}                   # message -> forget at (epoch seconds)
        self._receivers: list[Callable[[SessionEnd], None]] = []
        link.carry(self._announce, self._arrived)

    async def publish(self, end: SessionEnd) -> None:
        text = end.to_bytes().decode("utf-8")
        self._remember(text, end.at + end.ttl)
        self._link.publish(text, end.at + end.ttl - self._clock())

    def subscribe(self, receive: Callable[[SessionEnd], None]) -> None:
        self._receivers.append(receive)

    def unsubscribe(self, receive: Callable[[SessionEnd], None]) -> None:
        if receive in self._receivers:
            self._receivers.remove(receive)

    async def close(self) -> None:
        self._receivers.clear()

    def _arrived(self, text: str) -> None:
        if text in self._known:
            return
        try:
            end = SessionEnd.from_bytes(text.encode("utf-8"))
        except ValueError:
            log.warning("host coordinator sent something that is not a session end; ignored")
            return
        self._remember(text, end.at + end.ttl)
        self._metrics.host_ends.inc()
        for receive in list(self._receivers):
            receive(end)

    def _announce(self) -> list[tuple[str, float]]:
        now = self._clock()
        return [(text, until - now) for text, until in self._known.items() if until > now]

    def _remember(self, text: str, until: float) -> None:
        self._known[text] = until
        if len(self._known) > KNOWN_MAX:
            now = self._clock()
            self._known = {t: u for t, u in self._known.items() if u > now}
            while len(self._known) > KNOWN_MAX:
                del self._known[next(iter(self._known))]


class HostDenylist(MemoryDenylist):
    """This worker's record of ended sessions (``ending.SessionEnds.local``; the fanout keeps it the same in
    every worker), whose logout-token ``jti`` is claimed host-wide: a replayed logout token is refused
    whichever worker it reaches."""

    def __init__(self, link: HostLink, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._link = link

    async def first_use(self, token_id: str, ttl: float) -> bool:
        first = await self._link.claim("jti:" + fingerprint(token_id), ttl)
        local = await super().first_use(token_id, ttl)
        return local if first is None else first and local
