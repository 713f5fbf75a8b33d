"""The host coordinator: what the workers of one host (``workers: N``) share — locks, recent values, ends.

Each worker is its own process with its own memory, so without help two workers refresh the same
session twice (a provider that rotates refresh tokens then revokes the grant, RFC 9700 §4.14.2) and an
end of session handled by one worker never reaches the others. This process is the help: the supervisor
starts it before forking the workers (``supervisor.run_workers``), restarts it if it dies, and the workers
talk to it over a unix socket in a private directory (0700, made by the supervisor) with ``host.HostLink``.

Why a process of its own, and not the alternatives:

- *a thread in the supervisor*: the supervisor forks workers, and forking a multi-threaded process is
  unsafe (a lock held by another thread at fork time stays held forever in the child);
- *the supervisor's own loop*: the supervisor must stay a trivial ``os.wait`` loop that cannot crash; a
  coordinator that fails is restarted, a supervisor that fails takes the port down;
- *file locks and shared memory*: ``flock`` gives the mutex and frees it when its holder dies, but not
  "wake the other workers now" nor values with a lifetime; a socket gives all three, and a worker's
  disconnect (SIGKILL included: the kernel closes its socket) is the signal that frees its locks.

It offers, on one single-threaded asyncio loop:

- **named locks with a lease**: granted to one connection at a time; released by its holder, by the
  holder's disconnect, or by the lease running out (a hung holder blocks nobody beyond it);
- **values with a time to live** (``get``/``put``/``claim``): refresh results, sealed by the workers with
  the app's ``Sealer`` — this process never sees a plain token;
- **retained messages** (session ends): sent at once to every other connection and kept until their ttl,
  so a worker that (re)connects receives them all (``hello``). A worker publishes again every message
  it knows when it (re)connects, so a restarted coordinator learns them back from the workers that
  survived it; a message it already has is not sent twice.

Frames are a 4-byte big-endian length and a JSON object; sizes and entry counts are bounded, and a
connection that breaks the protocol is closed. Only processes of the same user can reach the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .errors import FrameError

log = logging.getLogger("authproxy.coordinator")

MAX_FRAME = 256 * 1024          # a sealed session with large tokens fits many times over
MAX_NAME = 256                  # lock names and value keys (fingerprints, prefixed)
MAX_LOCKS = 10_000              # locks held at once
MAX_VALUES = 10_000             # values kept (the oldest go first)
MAX_RETAINED = 10_000           # messages kept for replay (the oldest go first)
SWEEP_EVERY = 60.0              # seconds between passes that drop every expired value and message
MAX_CLIENTS = 1024              # connections (one per worker, and its reconnects)
MAX_BACKLOG = 8 * 1024 * 1024   # bytes waiting for a worker that does not read (stopped): then it is dropped
MAX_TTL = 31 * 86400.0          # no value or message outlives a month
PARENT_CHECK = 1.0              # how often to look whether the supervisor is gone (then exit)

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    return len(body).to_bytes(4, "big") + body


async def read_frame(reader: asyncio.StreamReader) -> Message:
    """The next frame; ``IncompleteReadError`` at the end of the stream, ``FrameError`` on junk."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes is over {MAX_FRAME}")
    try:
        message = json.loads(await reader.readexactly(size))
    except (ValueError, RecursionError) as exc:
        raise FrameError("frame is not JSON") from exc
    if not isinstance(message, dict):
        raise FrameError("frame is not an object")
    return message


def _text(message: Message, field: str, limit: int = MAX_NAME) -> str:
    value = message.get(field)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise FrameError(f"{field} must be a string of 1 to {limit} characters")
    return value


def _seconds(message: Message, field: str) -> float:
    value = message.get(field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise FrameError(f"{field} must be a positive number of seconds")
    return min(float(value), MAX_TTL)


class _Client:
    """One connection: where to write, and the locks it holds."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.locks: set[str] = set()

    def send(self, message: Message) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("coordinator: dropping a worker that has not read %d bytes", MAX_BACKLOG)
            self.writer.close()                           # it reconnects, and gets the replay, when it wakes
            return
        self.writer.write(encode(message))


class Coordinator:
    """The shared state and the protocol; ``serve_client`` runs once per connection."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._clients: set[_Client] = set()
        self._locks: dict[str, tuple[_Client, float]] = {}           # name -> (holder, lease ends)
        self._released: dict[str, asyncio.Event] = {}
        self._values: OrderedDict[str, tuple[float, str]] = OrderedDict()   # key -> (forget at, value)
        self._retained: OrderedDict[str, float] = OrderedDict()             # message -> forget at
        self._next_sweep = float("-inf")

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            writer.close()
            return
        client = _Client(writer)
        self._clients.add(client)
        waiting: set[asyncio.Task[None]] = set()
        try:
            while True:
                message = await read_frame(reader)
                if message.get("op") == "lock":          # may wait: answered by its own task
                    task = asyncio.create_task(self._lock(client, message.get("id"), _text(message, "name"),
                                                          _seconds(message, "lease"), _seconds(message, "wait")))
                    waiting.add(task)
                    task.add_done_callback(waiting.discard)
                else:
                    self._handle(client, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FrameError as exc:
            log.warning("coordinator: closing a connection that broke the protocol: %s", exc)
        finally:
            self._clients.discard(client)
            for task in waiting:
                task.cancel()
            for name in list(client.locks):
                self._unlock(client, name)
            writer.close()

    def _handle(self, client: _Client, message: Message) -> None:
        op, now = message.get("op"), self._clock()
        if op == "unlock":
            self._unlock(client, _text(message, "name"))
        elif op == "get":
            entry = self._values.get(_text(message, "key"))
            client.send({"id": message.get("id"), "value": entry[1] if entry and entry[0] > now else None})
        elif op == "put":
            self._put(_text(message, "key"), _text(message, "value", MAX_FRAME), now + _seconds(message, "ttl"))
        elif op == "claim":                                   # put if absent: True for the first caller only
            key = _text(message, "key")
            entry = self._values.get(key)
            first = entry is None or entry[0] <= now
            if first:
                self._put(key, "1", now + _seconds(message, "ttl"))
            client.send({"id": message.get("id"), "ok": first})
        elif op == "publish":
            self._retain(client, _text(message, "message", MAX_FRAME), _seconds(message, "ttl"), now)
        elif op == "hello":
            self._hello(client, now)
        else:
            raise FrameError(f"unknown op {op!r}")

    # -- locks ----------------------------------------------------------------------------------

    async def _lock(self, client: _Client, rid: Any, name: str, lease: float, wait: float) -> None:
        """Grant ``name`` once it is free or its lease has run out; answer ``ok: false`` after ``wait``."""
        deadline = self._clock() + wait
        while True:
            now = self._clock()
            held = self._locks.get(name)
            if (held is None or held[1] <= now) and (name in self._locks or len(self._locks) < MAX_LOCKS):
                if held is not None:
                    held[0].locks.discard(name)
                self._locks[name] = (client, now + lease)
                client.locks.add(name)
                client.send({"id": rid, "ok": True})
                return
            if now >= deadline:
                client.send({"id": rid, "ok": False})
                return
            until = min(deadline, held[1]) if held is not None else deadline
            released = self._released.setdefault(name, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), max(until - now, 0.001))

    def _unlock(self, client: _Client, name: str) -> None:
        held = self._locks.get(name)
        client.locks.discard(name)
        if held is not None and held[0] is client:
            del self._locks[name]
            released = self._released.pop(name, None)
            if released is not None:
                released.set()

    # -- values and retained messages ------------------------------------------------------------

    def _put(self, key: str, value: str, forget_at: float) -> None:
        self._values[key] = (forget_at, value)
        self._values.move_to_end(key)
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            _sweep(self._values, lambda entry: entry[0], now)
            _sweep(self._retained, lambda forget_at: forget_at, now)
        _trim(self._values, lambda entry: entry[0], now, MAX_VALUES)

    def _retain(self, sender: _Client, text: str, ttl: float, now: float) -> None:
        """Keep a message until its ttl and send it to every other connection, once."""
        if text in self._retained and self._retained[text] > now:
            return
        self._retained[text] = now + ttl
        _trim(self._retained, lambda forget_at: forget_at, now, MAX_RETAINED)
        for client in self._clients:
            if client is not sender:
                client.send({"ev": text})

    def _hello(self, client: _Client, now: float) -> None:
        """A (re)connected worker (which has just published again every end it knows): send it every
        message kept."""
        for text, forget_at in self._retained.items():
            if forget_at > now:
                client.send({"ev": text})


def _sweep(entries: OrderedDict[str, Any], forget_at: Callable[[Any], float], now: float) -> None:
    """Drop every expired entry. ``_trim`` stops at the first live one, and entries do not expire in the
    order they came (a refresh result kept 30 s after one kept an hour): this pass, once a minute, keeps
    the coordinator's memory to what is live rather than to the last MAX_VALUES of history."""
    for key in [k for k, v in entries.items() if forget_at(v) <= now]:
        del entries[key]


def _trim(entries: OrderedDict[str, Any], forget_at: Callable[[Any], float], now: float, limit: int) -> None:
    """Drop expired entries from the old end, then the oldest beyond ``limit``."""
    while entries:
        key, value = next(iter(entries.items()))
        if forget_at(value) > now and len(entries) <= limit:
            return
        del entries[key]


async def serve(path: str) -> None:
    """Listen on ``path`` until SIGTERM, or until the supervisor that started us is gone."""
    parent = os.getppid()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)                                       # left by a coordinator that died
    coordinator = Coordinator()
    # Created 0600, not chmod-ed after: between bind and chmod another local user could connect (the
    # test that checks the mode saw the window on a loaded machine). The coordinator is a process of its own.
    previous = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(coordinator.serve_client, path=path)
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set() and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK)
    server.close()


def main(argv: list[str]) -> int:
    """``python -m proxy.coordinator SOCKET``: run by the supervisor, not by hand."""
    if len(argv) != 2:
        print("usage: python -m proxy.coordinator SOCKET_PATH", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGHUP):       # Ctrl-C and reloads are the supervisor's business
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
