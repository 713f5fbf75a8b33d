"""Moving a large body from one socket to another inside the kernel, with splice(2).

A body streamed through Python costs, per byte, a ``recv`` into a buffer, a copy into a ``bytes``
object, another for the parser's slice, and a ``send`` back into the kernel: on a 1 GiB download that
was half of the throughput of nginx serving the same file directly. ``splice`` moves pages between a
socket and a pipe without bringing them to user space (it is how HAProxy relays bodies), so the proxy
only issues a few system calls per megabyte and the event loop stays free.

It is used only where it cannot change what goes over the wire: a body whose length is known, between
plain TCP or unix sockets (never TLS, where the bytes must pass through the TLS layer), with nothing
else writing to the destination meanwhile. The descriptors are duplicated, so a transport that closes
its socket during the copy cannot make us write into an unrelated connection that reused the number.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import socket

# Bodies shorter than this are copied as usual: the pipe and the extra system calls cost more than
# the copies they save (a 100 KB response was not faster spliced).
SPLICE_MIN = 1 << 20
# The pipe's capacity: 1 MiB (Linux's default pipe-max-size) moves a megabyte per pair of calls.
PIPE_SIZE = 1 << 20
# How often a transport's buffered bytes are checked for having left, before splicing after them.
FLUSH_POLL = 0.001
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# The source wakes us only once this much has arrived (SO_RCVLOWAT): a wake-up per arriving segment
# cost a Python callback and two system calls each for a few kilobytes. The socket is not reused.
LOW_WATER = 256 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


class SourceBroke(Exception):
    """The source ended, failed or stalled before the whole body came."""


class DestinationGone(Exception):
    """The destination's peer hung up."""


def available() -> bool:
    """Whether this platform has splice(2) (Linux, Python ≥ 3.10)."""
    return hasattr(os, "splice")


def socket_fd(transport: asyncio.BaseTransport | None) -> int | None:
    """The descriptor of a plain (not TLS) stream socket under ``transport``, else None."""
    if transport is None or transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6,
                                                                               socket.AF_UNIX):
        return None
    fd = sock.fileno()
    return fd if fd >= 0 else None


async def flushed(transport: asyncio.WriteTransport) -> bool:
    """Wait until everything written to ``transport`` has gone to its socket, so that bytes spliced
    into the socket come after it; False if the transport closed meanwhile. A head and the first
    pieces usually leave at once, so this rarely waits."""
    while transport.get_write_buffer_size():
        if transport.is_closing():
            return False
        await asyncio.sleep(FLUSH_POLL)
    return not transport.is_closing()


async def splice(source: int, destination: int, count: int, *, read_timeout: float,
                 write_timeout: float | None = None) -> None:
    """Move exactly ``count`` bytes from socket ``source`` to socket ``destination``.

    Raises SourceBroke when the source ends early, fails, or sends nothing for ``read_timeout``
    seconds while we wait for it, and DestinationGone when the destination fails or its peer hangs
    up, or takes nothing for ``write_timeout`` seconds while we wait for it (``limits.send_timeout``
    for a client; None: a slow destination is waited for as long as it takes).
    """
    loop = asyncio.get_running_loop()
    src = socket.socket(fileno=os.dup(source))        # a socket object: SO_RCVLOWAT is set on it
    dst = os.dup(destination)
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass                               # a lower pipe-max-size: the default capacity works too
        pump = _Pump(loop, src, dst, pipe_r, pipe_w, count, fcntl.fcntl(pipe_w, _F_GETPIPE_SZ),
                     (read_timeout, write_timeout))
        try:
            pump.step()
            await pump.done
        finally:
            pump.stop()
    finally:
        src.close()
        for fd in (dst, pipe_r, pipe_w):
            os.close(fd)


class _Pump:
    """The copy as a state machine driven by readiness callbacks, as a protocol is: the source stays
    registered for reading while the pipe has room, the destination for writing while the pipe holds
    bytes, and registrations change only when that changes. (Awaiting a future per wait cost four
    ``epoll_ctl`` calls and a task step each time, thousands of times per gigabyte.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: int, pipe_r: int, pipe_w: int,
                 count: int, capacity: int, timeouts: tuple[float, float | None]) -> None:
        self.loop, self.src_sock, self.src, self.dst = loop, src, src.fileno(), dst
        self.pipe_r, self.pipe_w = pipe_r, pipe_w
        self.count, self.capacity, self.in_pipe = count, capacity, 0
        self.read_timeout, self.write_timeout = timeouts
        self.done: asyncio.Future[None] = loop.create_future()
        self.reading = self.writing = False
        # A pipe's capacity is counted in slots, one per piece spliced in, as well as in bytes: it can be
        # full with fewer bytes in it than its size. A refused fill while bytes are in the pipe means
        # that; reading then waits for a drain (else a readable source would wake us in a busy loop).
        self.pipe_full = False
        self.last_read = self.last_write = loop.time()
        self.timer = loop.call_later(min(self.read_timeout, self.write_timeout or math.inf), self._check_stall)
        self._low_water(min(count, LOW_WATER))

    def step(self) -> None:
        """Move what can be moved now, then wait for whichever side can unblock the copy.

        A call that moves less than asked for means that side is exhausted for now: trying it again at
        once would only return EAGAIN, so we wait (most of a copy's system calls were such retries)."""
        if self.done.done():
            return
        try:
            while True:
                asked = 0 if self.pipe_full else min(self.count, self.capacity - self.in_pipe)
                filled = self._fill(asked) if asked else 0
                held = self.in_pipe
                drained = self._drain() if held else 0
                if not (self.count or self.in_pipe):
                    self._finish(None)
                    return
                if not (asked and filled == asked and drained == held):
                    break
        except (SourceBroke, DestinationGone) as exc:
            self._finish(exc)
            return
        self._want(read=bool(self.count) and self.in_pipe < self.capacity and not self.pipe_full,
                   write=self.in_pipe > 0)

    def _fill(self, asked: int) -> int:
        try:
            n = os.splice(self.src, self.pipe_w, asked, flags=_FLAGS)
        except BlockingIOError:
            self.pipe_full = self.in_pipe > 0
            return 0
        except OSError as exc:
            raise SourceBroke(f"reading failed: {exc.strerror}") from None
        if n == 0:
            raise SourceBroke(f"the connection closed with {self.count} bytes of the body still to come")
        self.count -= n
        self.in_pipe += n
        self.last_read = self.loop.time()
        if self.count < LOW_WATER:             # the last bytes: wake when they are all there, not later
            self._low_water(self.count)
        return n

    def _drain(self) -> int:
        try:
            n = os.splice(self.pipe_r, self.dst, self.in_pipe, flags=_FLAGS)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise DestinationGone(exc.strerror) from None
        self.in_pipe -= n
        if n:
            self.last_write = self.loop.time()
        self.pipe_full = self.pipe_full and n == 0
        return n

    def _low_water(self, size: int) -> None:
        if size > 0 and self.src_sock.family != socket.AF_UNIX:
            self.src_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)

    def _want(self, *, read: bool, write: bool) -> None:
        if read != self.reading:
            if read:
                self.loop.add_reader(self.src, self.step)
            else:
                self.loop.remove_reader(self.src)
            self.reading = read
        if write != self.writing:
            if write:
                self.loop.add_writer(self.dst, self.step)
            else:
                self.loop.remove_writer(self.dst)
            self.writing = write

    def _check_stall(self) -> None:
        """Fail when the source has sent nothing for ``read_timeout`` while we waited only for it, or
        the destination took nothing for ``write_timeout`` while we waited for it. Time spent waiting
        for one side does not count against the other: a slow client is not the upstream's fault."""
        if self.done.done():
            return
        now = self.loop.time()
        if self.writing:
            self.last_read = now
            if self.write_timeout is not None and now - self.last_write >= self.write_timeout:
                self._finish(DestinationGone("the destination took nothing within the send timeout"))
                return
        else:
            self.last_write = now
        idle = now - self.last_read
        if idle >= self.read_timeout:
            self._finish(SourceBroke("the upstream sent nothing within the read timeout"))
            return
        wait = self.read_timeout - idle
        if self.write_timeout is not None:
            wait = min(wait, self.write_timeout - (now - self.last_write))
        self.timer = self.loop.call_later(wait, self._check_stall)

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)
        self.stop()

    def stop(self) -> None:
        self.timer.cancel()
        self._want(read=False, write=False)
        self._low_water(1)                     # the socket as it was, whoever uses it next
