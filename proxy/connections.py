"""Client connections: how long a client may take to send a head or a body, to read an answer, to stay
idle, how large a head may be, and how many connections one worker holds.

aiohttp's server has one timer per connection, the keep-alive timer: it closes a connection that has
no complete request head when the timer fires, and it is armed at the connection's start and after
each response — with a default of 3630 s, and never moved by bytes that arrive. A client trickling one
header byte every 20 s kept a connection (and its memory) for an hour; a few thousand such clients
exhaust a worker's descriptors (Slowloris). Following nginx:

- ``limits.header_timeout`` (nginx ``client_header_timeout``, 60 s): a new connection must deliver its
  first request head whole within this of being accepted, and a kept-alive connection its next head
  within this of that head's first byte. Measured in total, not between bytes, so trickling does not
  extend it. The connection is closed without an answer, as nginx does.
- ``limits.keepalive_timeout`` (nginx ``keepalive_timeout``, 75 s): a connection idle between
  requests, not a byte of the next head yet, is closed after this.
- ``limits.body_timeout`` (nginx ``client_body_timeout``, 60 s): a request body that sends nothing for
  this long, while the proxy is reading it, closes the connection (and cancels the upstream request).
  Before, a body stalled on its way to an app that waits for all of it held both connections for
  good: aiohttp's client times reads of the answer, not the sending of the body.
- ``limits.send_timeout`` (nginx ``send_timeout``, 60 s): a client that takes no byte of our answer for
  this long is cut off, whether the bytes wait in the transport (watched from ``pause_writing``, so
  only connections that back up pay for it) or are spliced in the kernel (``upstream/splice.py``).
- ``limits.max_header_size``: the bytes of one request head (request line and fields). aiohttp caps
  a field (16 KiB here, for large cookies) and their number (128), not their sum: one head could be
  2 MiB, held in memory and forwarded. Beyond the cap the client gets ``431`` and the connection is
  closed (nginx: ``large_client_header_buffers``, 32 KiB by default; Node.js: 16 KiB).
- ``limits.max_connections`` (nginx ``worker_connections``): client connections per worker process.
  At the limit, nginx first closes idle keep-alive connections to make room and, when none is idle,
  drops the new connection ("worker_connections are not enough"). So here: an idle keep-alive
  connection is closed for the new one; with none idle, the new connection gets a ``503`` with
  ``Retry-After`` and is closed, so a client sees why (and a load balancer in front can retry
  elsewhere) rather than a reset.

The head and keep-alive deadlines are aiohttp's own keep-alive timer, moved:
``RequestHandler._process_keepalive`` reschedules itself to ``_next_keepalive_close_time`` and closes
only a connection waiting for a head, so setting that time is all a deadline needs. No task is made
per request; a body still arriving gets one timer handle, a backed-up answer another. The hot path
pays a few attribute checks per ``data_received`` (measured: no difference in CPU per request beyond
run-to-run noise, 50,000 keep-alive GETs).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import resource
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.helpers import ceil_timeout
from aiohttp.http import HttpRequestParser
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import (_PAYLOAD_ACCESS_ERROR, ERROR, MAX_MSG_QUEUE_SIZE, RequestHandler,
                                  RequestPayloadError, _ErrInfo)

from .config import LimitsConfig

if TYPE_CHECKING:
    from .express import ExpressLane, Taken

log = logging.getLogger("authproxy.connections")

# Memory after a burst: glibc's malloc keeps what thousands of closed connections freed in its arenas
# (measured: 9,000 idle connections closed, RSS stayed where it was). Once this many connections have
# closed since the most held, and TRIM_DELAY later (a burst's closes come together), malloc_trim(0) gives
# the free pages back to the system; one call took a few milliseconds of a 200 MiB heap.
TRIM_AFTER = 1000
TRIM_DELAY = 2.0
# Seconds between sweeps that take the request parser from connections at rest between requests and park
# them (``LimitedHandler._park``). The C parser keeps the last request's head fields — the cookie, twice —
# until the next request begins (about 5 KiB), and the ``start`` task and message queue wait for it. Freed
# 10–20 s after a burst of connections, that memory was already scattered among live objects and RSS stayed
# at 9 KiB per idle connection; freed within half a second it is reused by the next connections: 3.2 KiB
# (4.1 KiB with 1 s between sweeps; ``bench/idle.py``, 9,000 connections). A connection in use is parked at
# most once a sweep, and its next request pays a new parser and task (a few microseconds); a sweep visits
# only connections not parked (``awake``).
SHED_INTERVAL = 0.5
# Bytes a connection holds while a request finishes (``LimitedHandler._hold``) before it stops reading.
HOLD_LIMIT = 64 * 1024
# The message queue of every parked connection (``LimitedHandler._park``): empty, and immutable.
PARKED_QUEUE: tuple[()] = ()


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()


def _answer(status: bytes, text: bytes, *extra: bytes) -> bytes:
    """A whole plain-text response that closes the connection, written before aiohttp has a request."""
    fields = b"".join(field + b"\r\n" for field in extra)
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(text)).encode()
            + b"\r\n" + fields + b"Connection: close\r\n\r\n" + text)


# The answer to a request head beyond ``max_header_size``: sent before it is read whole, then closed.
HEAD_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"The request's header is too large.\r\n")
# The answer to a connection beyond ``max_connections``: sent before the request is read, then closed.
TOO_MANY = _answer(b"503 Service Unavailable", b"Too many connections; try again shortly.\r\n", b"Retry-After: 1")


class LimitedHandler(RequestHandler):
    """aiohttp's request handler with a deadline for each request head (see the module docstring)."""

    __slots__ = ("_at_rest", "_body", "_body_timeout", "_body_timer", "_counted", "_express", "_fed", "_head_bytes",
                 "_head_started", "_head_timeout", "_last_read", "_limited", "_max_head", "_parked", "_send_mark",
                 "_send_timer", "_stash", "_stashed", "express_last", "peer")

    def __init__(self, manager: LimitedServer, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=manager.limits.keepalive_timeout, **kwargs)
        self._limited = manager
        self._head_timeout = manager.limits.header_timeout
        self._head_started = True            # the first head's deadline runs from the connection's start
        self._head_bytes = 0                 # bytes of the head under way, while it is not whole
        self._max_head = manager.limits.max_header_size
        self._body: StreamReader | None = None        # a request body still arriving, watched for stalls
        self._body_timeout = manager.limits.body_timeout
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_mark = 0                           # bytes waiting to go out when last checked
        self._counted = True
        self._at_rest = False        # the parser is between requests, holding no byte of the next one
        self._parked = False         # idle over a sweep: no ``start`` task, no queue, no parser (``_park``)
        self._express: asyncio.Task[None] | None = None    # a request the express lane serves (express.py)
        self.express_last: Taken | None = None    # the last head the lane took here, and its parse (express.py)
        self._stash: list[bytes] = []        # bytes that came while a request finished, for after it
        self._stashed = 0                    # their size (reading pauses beyond HOLD_LIMIT)
        self._fed = False                    # aiohttp's parser has been given bytes
        self.peer: str | None = None         # the client's address, as aiohttp's ``request.remote`` reads it

    @property
    def idle(self) -> bool:
        """Waiting for a request head of which not a byte has come: safe to close for another client."""
        if self._express is not None:
            return False
        if self._parked:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._head_started and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = None if peer is None else str(peer[0]) if isinstance(peer, (list, tuple)) else str(peer)
        self._set_deadline(self._loop.time() + self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self._express is not None or self._stash:    # a request under way: the bytes wait for its end
            self._hold(data)
            return
        lane = self._limited.lane
        if lane is not None:
            if self._quiet():
                if lane.take(self, data):
                    return
            elif self._finishing():
                self._hold(data)
                return
        self._aiohttp_received(data)

    def _finishing(self) -> bool:
        """Whether aiohttp is finishing a bodiless request (its answer may be out already, the client's next
        head on its way) or this connection's ``start`` has not run yet, its parser between requests: the
        next read then waits for ``start`` to wait again (``_release``) and may take the express lane. Else a
        client that sent its next request as soon as it had an answer stayed on aiohttp's path for good."""
        return (self._waiter is None and self._task_handler is not None and not self._parked and not self._messages
                and (self._at_rest or not self._fed) and self._payload_parser is None
                and not (self._force_close or self._close or self._upgraded))

    def _hold(self, data: bytes) -> None:
        self._stash.append(data)
        self._stashed += len(data)
        if self._stashed > HOLD_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def _release(self) -> None:
        """Pass on the bytes held while a request finished (``_hold``), in order."""
        data, stashed = b"".join(self._stash), self._stashed
        self._stash, self._stashed = [], 0
        if self.transport is not None:
            if stashed > HOLD_LIMIT:
                self.transport.resume_reading()
            self.data_received(data)

    def _quiet(self) -> bool:
        """Whether aiohttp has no request of this connection under way and its parser holds no byte of one:
        then the next read may go to the express lane (``express.py``)."""
        if self._force_close or self._close or self._upgraded or self._payload_parser is not None:
            return False
        if self._parked:
            return True
        waiter = self._waiter
        # At rest: the last read aiohttp parsed ended exactly with a whole bodiless head, so its parser holds no
        # byte of another (a read that ended inside a second head left them there: those are aiohttp's).
        return (waiter is not None and not waiter.done() and not self._messages and self._head_bytes == 0
                and (self._at_rest or not self._fed))

    @property
    def closing(self) -> bool:
        """A shutdown or reload has begun closing this connection: aiohttp's parser takes no more bytes."""
        return self._force_close or self._close

    def express_started(self, serve: Coroutine[Any, Any, None]) -> None:
        """The express lane took the request in the last read: serve it; the connection is busy meanwhile."""
        self._request_in_progress = True
        self._express = self._loop.create_task(serve)

    def express_declined(self, data: bytes) -> None:
        """The lane let the request go before sending anything anywhere: aiohttp reads it, and what came after."""
        self._express_over()
        stash, stashed, self._stash, self._stashed = self._stash, self._stashed, [], 0
        if self.transport is not None:
            if stashed > HOLD_LIMIT:
                self.transport.resume_reading()
            self._aiohttp_received(b"".join([data, *stash]))

    def express_done(self, keep_alive: bool) -> None:
        """The lane answered: wait for the next head as after any answer (or close), then read what came meanwhile."""
        self._express_over()
        transport = self.transport
        if transport is None:
            return
        if not keep_alive or self._force_close or self._close:
            self.force_close()
            return
        self._at_rest = True                   # the parser never saw the request: nothing of it held
        self._head_started = False
        self._set_deadline(self._loop.time() + self._keepalive_timeout)
        if self._stash:
            self._release()

    def _express_over(self) -> None:
        self._express = None
        self._request_in_progress = False
        if self._handler_waiter is not None:          # a shutdown waits for the request under way
            self._handler_waiter.set_result(None)
            self._handler_waiter = None

    def _aiohttp_received(self, data: bytes) -> None:
        self._fed = True
        if self._force_close or self._close:
            # aiohttp drops what comes on a connection it is closing (a reload's graceful shutdown): no
            # head is parsed from it, so none may be counted either — an upload's body was taken for a
            # head that never ended and answered 431 (the soak, at a SIGHUP).
            super().data_received(data)
            return
        waiting = self._waiter is not None
        if self._parked:
            self._unpark()
            waiting = True
        if self._parser is None and self._payload_parser is None and not self._upgraded and self.transport is not None:
            self._parser = self._limited.new_parser(self)       # taken by a sweep while the connection idled
        if not self._head_started and waiting:
            self._head_started = True        # the first bytes of a kept-alive connection's next head
            self._set_deadline(self._loop.time() + self._head_timeout)
        if self._body is not None:
            self._last_read = self._loop.time()
        count = self._request_count
        super().data_received(data)
        # Between requests for sure only when this read ended exactly with a whole head without a body.
        self._at_rest = (self._request_count > count and data.endswith(b"\r\n\r\n") and not self._upgraded
                         and bool(self._messages) and self._messages[-1][1] is EMPTY_PAYLOAD)
        if self._messages:
            # A whole head arrived: the next one's clock starts at its first byte. Only when the bytes it
            # came in exceed the cap (a body may have come along) are its fields measured.
            if self._head_bytes + len(data) > self._max_head and self._head_too_large():
                self._refuse_head()
            self._head_started = False
            self._head_bytes = 0
            self._watch_body(*self._messages[-1])
        elif self._head_started:             # still no whole head: every byte so far was head
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._refuse_head()

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        """A WebSocket takes the connection over (``WebSocketResponse.prepare``): frames follow, never another
        request head, so the HTTP parser goes, with the handshake's head fields it still holds (the
        cookie, as bytes and as text: about 4 KB of every idle socket, ``bench/idle.py --trace``). It will
        never be parked either: sweeps pass it by from now on."""
        super().set_parser(parser, data_received_cb)
        self._parser = None
        self._limited.awake.discard(self)

    def _watch_body(self, message: Any, payload: StreamReader) -> None:
        """Start watching a request body that has not all come yet (none for an upgrade: its bytes are frames)."""
        if payload is EMPTY_PAYLOAD or payload is self._body or getattr(message, "upgrade", True) or payload.is_eof():
            return
        self._body, self._last_read = payload, self._loop.time()
        if self._body_timer is None:
            self._body_timer = self._loop.call_at(self._last_read + self._body_timeout, self._check_body)

    def _check_body(self) -> None:
        """nginx's ``client_body_timeout``: close when the body under way has sent nothing for
        ``body_timeout`` while we were reading (not while reading was paused for a slow upstream)."""
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            self._body = None
            return
        now = self._loop.time()
        if self._reading_paused or self._buffer_paused:
            self._last_read = now
        elif now - self._last_read >= self._body_timeout:
            log.info("closing a connection whose request body stalled for %gs", self._body_timeout)
            self._body = None
            self.force_close()
            return
        self._body_timer = self._loop.call_at(self._last_read + self._body_timeout, self._check_body)

    def _head_too_large(self) -> bool:
        for message, _ in self._messages:
            raw = getattr(message, "raw_headers", ())
            if sum(len(name) + len(value) + 4 for name, value in raw) > self._max_head:
                return True
        return False

    def _refuse_head(self) -> None:
        if self.transport is not None:
            self.transport.write(HEAD_TOO_LARGE)
        self._messages.clear()
        self.force_close()

    def pause_writing(self) -> None:
        """The client takes our bytes more slowly than we write them: watch that it takes any."""
        super().pause_writing()
        if self._send_timer is None and self.transport is not None:
            self._send_mark = self.transport.get_write_buffer_size()
            self._send_timer = self._loop.call_later(self._limited.limits.send_timeout, self._check_send)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _check_send(self) -> None:
        """nginx's ``send_timeout``: abort when the client took no byte for ``send_timeout`` (a slow read
        held the connection, the upstream's and the response's buffers for as long as it liked)."""
        self._send_timer = None
        if not self._paused or self.transport is None:
            return
        waiting = self.transport.get_write_buffer_size()
        if waiting < self._send_mark:           # it took some: check again later
            self._send_mark = waiting
            self._send_timer = self._loop.call_later(self._limited.limits.send_timeout, self._check_send)
            return
        log.info("aborting a connection whose client took nothing for %gs", self._limited.limits.send_timeout)
        self.transport.abort()
        self.force_close()

    async def start(self) -> None:
        """aiohttp's request loop, with each request served in a coroutine of its own (``_serve``).

        aiohttp's ``start`` serves requests in its own frame, so while a kept-alive connection waits for
        its next request, that frame still holds the last one: its parsed head (the cookie twice, as
        bytes and as text), the request with everything handlers stored on it, the response and its
        writer — about 8 KiB of a measured 17 KiB per idle connection (``bench/idle.py --trace``). Here
        they go with ``_serve``'s frame as soon as the answer is out. Otherwise the same steps in the
        same order, as of aiohttp 3.14.
        """
        while not self._force_close:
            if not self._messages:
                waiter = self._waiter = self._loop.create_future()
                if self._stash:
                    self._release()              # held while the last request finished (``_finishing``)
                try:
                    await waiter
                finally:
                    if self._waiter is waiter:
                        self._waiter = None
                if self._task_handler is not asyncio.current_task():
                    return                   # parked by a sweep (``_park``): the next bytes start another loop
            if not await self._serve(*self._messages.popleft()):
                break
            if getattr(self._payload_parser, "owns_connection", False):
                self._task_handler = None        # a WebSocket relay has the connection now (websocket.py)
                return
            if self._keepalive and not self._close and not self._force_close:
                self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
                if self._keepalive_handle is None:
                    self._keepalive_handle = self._loop.call_at(self._next_keepalive_close_time,
                                                                self._process_keepalive)
            else:
                break
        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()

    async def _serve(self, message: Any, payload: StreamReader) -> bool:
        """One request of ``start``'s loop (aiohttp's loop body); False: stop serving this connection."""
        loop, manager = self._loop, self._manager
        assert manager is not None and self._request_factory is not None and self._request_handler is not None
        if self._parser is not None:
            self._parser.message_consumed()
        if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
            self._resume_reading_if_drained()
        started = loop.time() if self._logging_enabled else None
        manager.requests_count += 1
        writer = StreamWriter(self, loop)
        handler = self._request_handler
        if isinstance(message, _ErrInfo):
            handler, message = self._make_error_handler(message), ERROR
        request = self._request_factory(message, payload, self, writer,
                                        self._task_handler or asyncio.current_task(loop))  # type: ignore[arg-type]
        try:
            try:
                resp, reset = await loop.create_task(self._handle_request(request, started, handler))
            except ConnectionError:
                self.log_debug("Ignored premature client disconnection")
                return False
            if reset:
                self.log_debug("Ignored premature client disconnection 2")
                return False
            self._keepalive = bool(resp.keep_alive)
            if not payload.is_eof():
                await self._linger(payload)
            payload.set_exception(_PAYLOAD_ACCESS_ERROR)
        except asyncio.CancelledError:
            self.log_debug("Ignored premature client disconnection")
            self.force_close()
            raise
        except Exception as exc:
            self.log_exception("Unhandled exception", exc_info=exc)
            self.force_close()
        except BaseException:
            self.force_close()
            raise
        finally:
            request._task = None  # type: ignore[assignment]   # aiohttp's: no reference cycle on an exception
        return True

    async def _linger(self, payload: StreamReader) -> None:
        """Read and drop what is left of a request body the handler did not read, for up to lingering_time."""
        lingering_time = self._lingering_time
        if not self._force_close and lingering_time:
            now = self._loop.time()
            end = now + lingering_time
            try:
                while not payload.is_eof() and now < end:
                    async with ceil_timeout(end - now):
                        await payload.readany()
                    now = self._loop.time()
            except (TimeoutError, asyncio.CancelledError):
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        if not payload.is_eof() and not self._force_close:
            self.log_debug("Uncompleted request.")
            self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._express is not None:
            self._express.cancel()             # handler_cancellation, as for aiohttp's requests: a 499
            self._express_over()
        for timer in (self._body_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        if self._counted:
            self._counted = False
            self._limited.released()
        self._limited.awake.discard(self)
        super().connection_lost(exc)

    def shed_parser(self) -> bool:
        """Let go of the request parser (and the last request's head it still holds) if this connection is
        between requests, its parser holding no byte of a next one, and park it; True if it did."""
        shed = (self._at_rest and self.idle and self._parser is not None and self._payload_parser is None
                and not self._upgraded and not self._reading_paused and not self._buffer_paused)
        if shed:
            self._parser = None
            self.express_last = None
            self._park()
        return shed

    def _park(self) -> None:
        """Let an idle connection's ``start`` task end and its message queue go (about 1.2 KB of the 4.6 KB
        of Python heap an idle keep-alive connection held, ``bench/idle.py --trace``): what is left is the
        transport, this handler and its keep-alive timer. The next bytes unpark it (``data_received``).

        The queue becomes an empty tuple, shared and immutable: anything that appended to a parked
        connection's queue would fail loudly instead of queueing into every parked connection."""
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            return
        self._parked = True
        self._limited.awake.discard(self)
        self._messages = PARKED_QUEUE           # type: ignore[assignment]
        self._task_handler = None
        self._waiter = None
        waiter.set_result(None)                 # start() sees it is no longer the task and returns

    def _unpark(self) -> None:
        """Bytes came for a parked connection: a queue and a ``start`` task, as ``connection_made`` made."""
        self._parked = False
        self._limited.awake.add(self)
        self._messages = deque()
        self._task_handler = self._loop.create_task(self.start())

    def _process_keepalive(self) -> None:
        """aiohttp's keep-alive timer closes only a connection whose ``start`` waits for a head; a parked
        one has no ``start``, and is idle by definition."""
        if self._express is not None:               # re-armed when the express request ends
            self._keepalive_handle = None
            return
        if self._parked and not self._force_close and self._loop.time() >= self._next_keepalive_close_time:
            self._keepalive_handle = None
            self.force_close()
            return
        super()._process_keepalive()

    def close(self) -> None:
        """aiohttp's ``close`` lets ``start`` finish the request under way and then close; a parked
        connection has none under way and no ``start`` to do it."""
        super().close()
        if self._parked and self._express is None:      # an express request under way closes it when done
            self.force_close()

    def _set_deadline(self, when: float) -> None:
        """Close this connection at ``when`` if no whole head has come by then (aiohttp's keep-alive timer)."""
        self._next_keepalive_close_time = when
        handle = self._keepalive_handle
        if handle is None or handle.when() > when:  # type: ignore[attr-defined]   # a TimerHandle (call_at)
            if handle is not None:
                handle.cancel()
            self._keepalive_handle = self._loop.call_at(when, self._process_keepalive)


class _Refused(asyncio.Protocol):
    """A connection beyond the limit: told so, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.WriteTransport, transport)     # not isinstance: uvloop's transports are no subclasses
        writer.write(TOO_MANY)
        writer.close()


class LimitedServer(web.Server):
    """aiohttp's server (the protocol factory) with the limits of ``LimitsConfig``."""

    def __init__(self, limits: LimitsConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.open = 0
        self._warned = False
        self._most = 0                                 # the most connections held since the last trim
        self._trim: asyncio.Handle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.awake: set[LimitedHandler] = set()        # connections not parked: what a sweep looks at
        self.lane: ExpressLane | None = None           # the express lane (express.py), set by LimitedRunner

    def __call__(self) -> RequestHandler:
        if self.open >= self.limits.max_connections and not self._close_an_idle_one():
            if not self._warned:
                log.warning("limits.max_connections (%d) reached: new connections get 503",
                            self.limits.max_connections)
                self._warned = True
            return _Refused()                      # type: ignore[return-value]
        self.open += 1
        self._most = max(self._most, self.open)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SHED_INTERVAL, self._sweep)
        handler = LimitedHandler(self, loop=self._loop, **self._kwargs)
        self.awake.add(handler)
        return handler

    def new_parser(self, handler: LimitedHandler) -> HttpRequestParser:
        """A request parser for ``handler``, made as aiohttp's RequestHandler makes its own."""
        return HttpRequestParser(handler, self._loop, handler._read_bufsize, max_line_size=handler.max_line_size,
                                 max_field_size=handler.max_field_size, max_headers=handler.max_headers,
                                 payload_exception=RequestPayloadError,
                                 auto_decompress=self._kwargs.get("auto_decompress", True),
                                 max_msg_queue_size=MAX_MSG_QUEUE_SIZE)

    def _sweep(self) -> None:
        """Park every connection at rest between requests (SHED_INTERVAL), and trim malloc's arenas when that
        freed many (TRIM_AFTER); stop sweeping when no connection is open."""
        self._sweeper = None
        shed = sum(handler.shed_parser() for handler in list(self.awake))
        if shed >= TRIM_AFTER and self._trim is None and MALLOC_TRIM is not None:
            self._trim = self._loop.call_soon(self._trim_memory)     # what they held is free: give it back
        if self.open > 0:
            self._sweeper = self._loop.call_later(SHED_INTERVAL, self._sweep)

    def released(self) -> None:
        self.open -= 1
        if self.open < self.limits.max_connections * 0.9:
            self._warned = False
        if self._most - self.open >= TRIM_AFTER and self._trim is None and MALLOC_TRIM is not None:
            self._trim = self._loop.call_later(TRIM_DELAY, self._trim_memory)

    def _trim_memory(self) -> None:
        """Give back to the system what a burst of connections left free in malloc's arenas (TRIM_AFTER)."""
        self._trim, self._most = None, self.open
        if MALLOC_TRIM is not None:
            started = time.perf_counter()
            MALLOC_TRIM()
            log.debug("malloc_trim after a burst of connections: %.1f ms", (time.perf_counter() - started) * 1000)

    def _close_an_idle_one(self) -> bool:
        for handler in self._connections:
            if isinstance(handler, LimitedHandler) and handler.idle:
                handler.force_close()
                return True
        return False


def raise_descriptor_limit(limits: LimitsConfig) -> None:
    """Let the process open what ``max_connections`` needs (a client's connection and one to the app each),
    raising the soft limit on open files up to the hard one as Go's runtime does; warn if even that is short:
    beyond it, accepting fails (EMFILE) before ``max_connections`` could answer anyone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * limits.max_connections + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("limits.max_connections is %d, but this process may open only %d files (ulimit -n); "
                    "raise the limit to %d or lower max_connections to %d", limits.max_connections, soft,
                    wanted, max((soft - 64) // 2, 1))


class LimitedRunner(web.AppRunner):
    """``web.AppRunner`` whose server applies ``limits`` to every client connection."""

    def __init__(self, app: web.Application, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()          # starts the app and freezes it
        limited = LimitedServer(self._limits, server.request_handler, request_factory=server.request_factory,
                                handler_cancellation=server.handler_cancellation, **server._kwargs)
        if isinstance(self._app, web.Application):
            from .express import ExpressLane       # it imports the gate, which imports the app's modules
            limited.lane = ExpressLane.for_app(self._app)
        return limited
