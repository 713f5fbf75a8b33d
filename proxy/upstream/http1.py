"""The lean HTTP/1.1 client for the proxy's most common upstream exchange: its response, errors and limits.

``forward.Forwarder`` sends a request to it when it has no body and nothing unusual: a plain ``http``
or ``unix:`` upstream, no upgrade, no ``Expect``, not ``HEAD`` (see ``forward.is_lean``), or a body
large enough to be spliced. Everything else — TLS, other bodies, upgrades — goes through aiohttp's
``ClientSession``. On a tiny proxied GET, aiohttp's client (``ClientRequest``, its auto headers, timers
and connector bookkeeping) was 29 % of the proxy's CPU time; this client is a protocol object, one head
written in one ``write``, and the response parsed by ``httptools`` (llhttp, the parser Node.js uses) in C.

It is three modules, read in the order a request takes them:

- ``http1_pool``        keep-alive connections to one upstream; sending a request (its head, and a
                        spliced body) and waiting for the answer's head, with one retry where safe;
- ``http1_connection``  one connection: the protocol object that parses answers as they arrive and
                        enforces the caps on a response head;
- ``http1`` (this one)  what the rest of the proxy reads: ``Http1Response`` (status, headers, and the
                        body as it arrives), the errors, and the caps themselves.

The response body is streamed: at most ``HIGH_WATER`` bytes are buffered before reading from the
upstream pauses, so memory stays flat for any size. A connection goes back to the pool only when its
response was read to the end and both sides allow keep-alive; anything cut short is closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from .splice import socket_fd

if TYPE_CHECKING:
    from .http1_connection import Http1Connection

# Bytes of response body buffered before the upstream connection stops being read (flow control).
HIGH_WATER = 256 * 1024


# Caps on a response head, as aiohttp's own parser has (its client's defaults: 8190 bytes per line or
# field, 128 fields), and on the whole head, as nginx's ``proxy_buffer_size`` is: beyond them the answer
# is a 502 ("upstream sent too big header", nginx's words), never relayed. Without them, one 64 MiB
# header cost 4.4 s of CPU (httptools joins a field's pieces one by one) and 335 MiB, and was relayed.
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
MAX_HEAD_BYTES = 64 * 1024


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

    def __init__(self, conn: Http1Connection, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
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
