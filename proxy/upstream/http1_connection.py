"""One keep-alive connection of the lean HTTP/1.1 client: the protocol object that parses answers.

``httptools`` (llhttp) calls back as bytes arrive: the status line, each header field, each piece of
body, the message's end. This object turns those calls into an ``Http1Response`` (``http1.py``), feeds
it the body, stops reading when the response's buffer is full, and decides whether the connection may
carry another request: only when the answer was read to its end and both sides allow keep-alive. A
response head beyond the caps (``http1.MAX_HEAD_BYTES``, ``MAX_HEADERS``, ``MAX_FIELD_SIZE``) fails the
request while it arrives, before it costs the CPU and memory of parsing it whole.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from .http1 import MAX_HEAD_BYTES, Http1Error, Http1HeadTooLarge, Http1Response, head_problem

if TYPE_CHECKING:
    from .http1_pool import Http1Pool

# Response fields that frame a body; without either, the body ends when the connection closes.
_FRAMING = frozenset({"content-length", "transfer-encoding"})



class Http1Connection(asyncio.Protocol):
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
