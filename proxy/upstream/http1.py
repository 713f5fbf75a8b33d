"""A lean, pooled HTTP/1.1 client for the proxy's most common upstream exchange.

``forward.Forwarder`` sends a request here when it has no body and nothing unusual: a plain ``http``
or ``unix:`` upstream, no upgrade, no ``Expect``, not ``HEAD`` (see ``forward.is_lean``). Everything
else — TLS, bodies, upgrades — goes through aiohttp's ``ClientSession``. On a tiny proxied GET,
aiohttp's client (``ClientRequest``, its auto headers, timers and connector bookkeeping) was 29 % of
the proxy's CPU time; this client is a protocol object, one head written in one ``write``, and the
response parsed by ``httptools`` (llhttp, the parser Node.js uses) in C.

The response body is streamed: at most ``HIGH_WATER`` bytes are buffered before reading from the
upstream pauses, so memory stays flat for any size. A connection goes back to the pool only when its
response was read to the end and both sides allow keep-alive; anything cut short is closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable

import httptools

from . import splice
from .splice import socket_fd

# Bytes of response body buffered before the upstream connection stops being read (flow control).
HIGH_WATER = 256 * 1024
# A pooled connection idle longer than this is closed instead of reused (aiohttp's default too).
KEEPALIVE_TIMEOUT = 60.0


# Caps on a response head, as aiohttp's own parser has (its client's defaults: 8190 bytes per line or
# field, 128 fields), and on the whole head, as nginx's ``proxy_buffer_size`` is: beyond them the answer
# is a 502 ("upstream sent too big header", nginx's words), never relayed. Without them, one 64 MiB
# header cost 4.4 s of CPU (httptools joins a field's pieces one by one) and 335 MiB, and was relayed.
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
MAX_HEAD_BYTES = 64 * 1024


# Response fields that frame a body; without either, the body ends when the connection closes.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class Http1Error(Exception):
    """The upstream could not be reached, hung up, or answered with something that is not HTTP/1.x."""

    before_response = False        # True: the connection failed before a byte of the response came


class Http1HeadTooLarge(Http1Error):
    """The upstream's response head is beyond MAX_HEAD_BYTES, MAX_HEADERS or MAX_FIELD_SIZE."""


def head_problem(reason: int, count: int, total: int, longest: int) -> str | None:
    """Why a response head is too big to relay, or None: ``reason``, the status line's reason length;
    ``count`` header fields, ``total`` bytes of them, the ``longest`` one's size (name and value)."""
    if reason > MAX_FIELD_SIZE or longest > MAX_FIELD_SIZE:
        return f"a line or header field longer than {MAX_FIELD_SIZE} bytes"
    if count > MAX_HEADERS:
        return f"more than {MAX_HEADERS} header fields"
    return f"a head larger than {MAX_HEAD_BYTES} bytes" if reason + total > MAX_HEAD_BYTES else None


def headers_problem(reason: str | None, headers: Iterable[tuple[str, str]]) -> str | None:
    """``head_problem`` for a head already parsed (aiohttp's client caps fields and their number, not the total)."""
    sizes = [len(name) + len(value) + 4 for name, value in headers]
    return head_problem(len(reason or ""), len(sizes), sum(sizes), max(sizes, default=0) - 4)


class Http1Timeout(Http1Error):
    """No byte from the upstream within the read timeout (or no connection within the connect timeout)."""


class Http1Response:
    """The status line and headers of an upstream response, and its body as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_received",
        "_size",
        "_waiter",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._received = 0                     # body bytes parsed so far, handed out or not
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def read_timeout(self) -> float:
        return self._conn.read_timeout

    def complete_body(self) -> bytes | None:
        """The whole body if it has arrived already (a small response usually comes with its head)."""
        if not self._eof or self._error is not None:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return body

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces the upstream sent; raises Http1Error if it breaks off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size < HIGH_WATER // 2:
                    self._conn.resume()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self._eof:
                return
            self._waiter = self._conn.loop.create_future()
            timer = self._conn.loop.call_later(self._conn.read_timeout, self._timed_out, self._waiter)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None

    def detach(self) -> tuple[list[bytes], int, int] | None:
        """Stop parsing and hand over the rest of the body: (the pieces parsed but not yet read, the
        socket's descriptor, body bytes parsed so far). The caller moves the remaining bytes itself
        (``splice.py``); the connection is closed afterwards, never reused, as the parser did not see
        the end of its message. None when the connection is not a plain socket or the body failed."""
        if self._error is not None or self._eof or self._conn.closed:
            return None
        fd = socket_fd(self._conn.transport)
        if fd is None:
            return None
        self._conn.pause()
        self._conn.reusable = False
        chunks = list(self._chunks)
        self._chunks.clear()
        self._size = 0
        return chunks, fd, self._received

    def at_eof(self) -> bool:
        return self._eof and not self._chunks and self._error is None

    def release(self) -> None:
        """Give the connection back to the pool (or close it if it cannot be reused)."""
        self._conn.finished(self)

    def close(self) -> None:
        self._conn.close()

    # -- fed by the connection --

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._received += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self, error: Exception | None = None) -> None:
        if not self._eof:
            self._eof = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._error = Http1Timeout("the upstream sent nothing within the read timeout")
            self._eof = True
            waiter.set_result(None)
            self._conn.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses responses with httptools' callbacks."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self.response: Http1Response | None = None
        self._head: asyncio.Future[Http1Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._reason = b""
        self._paused = False
        self._got_bytes = False
        self._until_close = False
        self._head_bytes = 0                   # bytes received while the response head is still incomplete
        self._head_size = 0                    # bytes of this head's fields (name, value, separators)
        self._longest = 0                      # the longest field's name and value

    # -- used by the pool and the response --

    def send(self, head: bytes) -> asyncio.Future[Http1Response]:
        assert self.transport is not None
        self._head = self.loop.create_future()
        self.response = None
        self.reusable = False
        self._got_bytes = False
        self._until_close = False
        self._head_bytes = 0
        self.transport.write(head)
        return self._head

    def finished(self, response: Http1Response) -> None:
        if self.reusable and not self.closed and response.at_eof():
            self.response = None
            self.resume()                      # a body read whole (``complete_body``) may have paused reading
            self.pool.put(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(Http1Error(f"the upstream's response is not valid HTTP/1.1: {exc}"))
            self.close()
            return
        if self.response is None and not self.closed:     # still in the head: every byte fed was head
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._too_big(f"a head larger than {MAX_HEAD_BYTES} bytes")

    def _too_big(self, problem: str) -> None:
        self._fail(Http1HeadTooLarge(f"upstream sent too big header: {problem}"))
        self.close()

    def eof_received(self) -> bool:
        self.closed = True                     # the upstream is done with this connection: never reuse it
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None and self._until_close:
            self.response._end()                 # a body framed by the connection's close is complete
        self._fail(Http1Error("the upstream closed the connection"))

    def _fail(self, error: Http1Error) -> None:
        self.reusable = False
        if self._head is not None and not self._head.done():
            error.before_response = not self._got_bytes
            self._head.set_exception(error)
        elif self.response is not None:
            self.response._end(error)

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""
        self._head_size = self._longest = 0

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size + 4
        if size > self._longest:
            self._longest = size
        # Decoded as aiohttp's own parser does, so the server side writes back exactly the same bytes.
        self._headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if self._head is None or self._head.done():  # an answer to no request: never trust this connection again
            self.reusable = False
            self.close()
            return
        problem = head_problem(len(self._reason), len(self._headers), self._head_size, self._longest)
        if problem is not None:
            self._too_big(problem)
            return
        if status < 200:                       # 1xx interim answers (103 Early Hints): wait for the final one
            return
        self.response = Http1Response(self, status, self._reason.decode("utf-8", "replace"), self._headers)
        self._until_close = status not in (204, 304) and not any(
            name.lower() in _FRAMING for name, _ in self._headers)
        if self._head is not None and not self._head.done():
            self._head.set_result(self.response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.response._eof:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is None or self.closed:   # the end of a 1xx, or of an answer to no request
            return
        self.reusable = self.parser.should_keep_alive()
        self.response._end()


class Http1Pool:
    """Keep-alive connections to one upstream, ``host:port`` or a unix socket path."""

    def __init__(self, *, host: str | None = None, port: int | None = None, unix_path: str | None = None,
                 connect_timeout: float, read_timeout: float) -> None:
        self.host, self.port, self.unix_path = host, port, unix_path
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def put(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    async def _connect(self) -> _Connection:
        try:
            if self.unix_path is not None:
                coro = self.loop.create_unix_connection(lambda: _Connection(self), self.unix_path)
            else:
                assert self.host is not None and self.port is not None      # a TCP upstream has both
                coro = self.loop.create_connection(lambda: _Connection(self), self.host, self.port)
            _, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except TimeoutError:
            raise Http1Timeout("no connection within the connect timeout") from None
        except OSError as exc:
            raise Http1Error(f"cannot connect: {exc}") from None
        return conn

    def _pooled(self) -> _Connection | None:
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()
            if (not conn.closed and conn.transport is not None and not conn.transport.is_closing()
                    and now - conn.idle_since < KEEPALIVE_TIMEOUT):
                return conn
            conn.close()
        return None

    async def request(self, head: bytes, *, idempotent: bool) -> Http1Response:
        """Send a bodiless request (its whole head, already serialised) and wait for the response head.

        An idempotent request (RFC 9110 §9.2.2) on a pooled connection that the upstream closed before
        answering a byte is sent once more on a new connection, as aiohttp's client does: the upstream
        closing an idle keep-alive connection just as we reuse it is a race, not a failure.
        """
        conn = self._pooled()
        if conn is not None:
            try:
                return await self._exchange(conn, head)
            except Http1Timeout:
                raise
            except Http1Error as exc:
                if not (idempotent and exc.before_response):
                    raise
        return await self._exchange(await self._connect(), head)

    async def request_spliced(self, head: bytes, body_start: bytes, source: int, count: int) -> Http1Response:
        """Send a request whose body is ``body_start`` (already read from the client) and then ``count``
        bytes moved from the client's socket ``source`` in the kernel (``splice.py``), and wait for the
        response head. Always on a new connection: a pooled one that the upstream closed just before
        could not be retried, the body being spent. Raises splice.SourceBroke when the client's body
        breaks off, and Http1Error when the upstream fails without answering."""
        conn = await self._connect()
        waiter = conn.send(head + body_start)
        destination = socket_fd(conn.transport)
        try:
            if destination is None or conn.transport is None or not await splice.flushed(conn.transport):
                raise splice.DestinationGone("the connection closed")
            await splice.splice(source, destination, count, read_timeout=self.read_timeout)
        except splice.DestinationGone:
            # The upstream stopped taking the body: fine if it answered already (413, 401...).
            if not waiter.done() or waiter.exception() is not None:
                conn.close()
                raise Http1Error("the upstream closed the connection while the request body was sent") from None
        except BaseException:
            conn.close()
            if waiter.done() and not waiter.cancelled():
                waiter.exception()             # retrieved: a failure we report otherwise
            raise
        return await self._answer(conn, waiter)

    async def _exchange(self, conn: _Connection, head: bytes) -> Http1Response:
        return await self._answer(conn, conn.send(head))

    async def _answer(self, conn: _Connection, waiter: asyncio.Future[Http1Response]) -> Http1Response:
        timer = self.loop.call_later(self.read_timeout, _expire, waiter, conn)
        try:
            return await waiter
        except asyncio.CancelledError:
            conn.close()                       # the client went away: never reuse a half-used connection
            raise
        finally:
            timer.cancel()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _expire(waiter: asyncio.Future[Http1Response], conn: _Connection) -> None:
    if not waiter.done():
        waiter.set_exception(Http1Timeout("the upstream did not answer within the read timeout"))
        conn.close()


def serialize_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and header fields, checked for CR/LF (a field must never split in two)."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += ["", ""]
    text = "\r\n".join(lines)
    expected = len(lines) - 1
    if text.count("\r") != expected or text.count("\n") != expected:
        raise ValueError("a request header contains CR or LF")
    return text.encode("utf-8", "surrogateescape")
