"""The lean HTTP/1.1 client's pool: keep-alive connections to one upstream, and sending requests on them.

A request's head arrives here already serialised (``serialize_head``, which refuses CR or LF inside a
field); the pool picks an idle connection that is still open and not idle for too long, or opens a new
one, writes the head and waits for the response head within the read timeout. A request with a large
body goes on a new connection, its body moved from the client's socket in the kernel (``splice.py``).
The connections themselves are ``http1_connection.py``'s; the response, ``http1.py``'s.
"""

from __future__ import annotations

import asyncio

from . import splice
from .http1 import Http1Error, Http1Response, Http1Timeout
from .http1_connection import Http1Connection
from .splice import socket_fd

# A pooled connection idle longer than this is closed instead of reused (aiohttp's default too).
KEEPALIVE_TIMEOUT = 60.0


class Http1Pool:
    """Keep-alive connections to one upstream, ``host:port`` or a unix socket path."""

    def __init__(self, *, host: str | None = None, port: int | None = None, unix_path: str | None = None,
                 connect_timeout: float, read_timeout: float) -> None:
        self.host, self.port, self.unix_path = host, port, unix_path
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[Http1Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def put(self, conn: Http1Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    async def _connect(self) -> Http1Connection:
        try:
            if self.unix_path is not None:
                coro = self.loop.create_unix_connection(lambda: Http1Connection(self), self.unix_path)
            else:
                assert self.host is not None and self.port is not None      # a TCP upstream has both
                coro = self.loop.create_connection(lambda: Http1Connection(self), self.host, self.port)
            _, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except TimeoutError:
            raise Http1Timeout("no connection within the connect timeout") from None
        except OSError as exc:
            raise Http1Error(f"cannot connect: {exc}") from None
        return conn

    def _pooled(self) -> Http1Connection | None:
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
                return await self._answer(conn, conn.send(head))
            except Http1Timeout:
                raise
            except Http1Error as exc:
                if not (idempotent and exc.before_response):
                    raise
        conn = await self._connect()
        return await self._answer(conn, conn.send(head))

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

    async def _answer(self, conn: Http1Connection, waiter: asyncio.Future[Http1Response]) -> Http1Response:
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


def _expire(waiter: asyncio.Future[Http1Response], conn: Http1Connection) -> None:
    if not waiter.done():
        waiter.set_exception(Http1Timeout("the upstream did not answer within the read timeout"))
        conn.close()


def serialize_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and header fields, checked for CR/LF (a field must never split in two)."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    # One test of the lines joined: ``in`` finds a character with memchr, where ``count`` over the whole head
    # (a cookie and a token are kilobytes) cost 2.3 µs of a 73 µs request.
    joined = "".join(lines)
    if "\r" in joined or "\n" in joined:
        raise ValueError("a request header contains CR or LF")
    lines += ["", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
