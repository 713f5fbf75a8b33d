"""splice.py on real loopback sockets: exact counts, failures on either side, no spinning, nothing leaked."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from proxy.upstream import splice

pytestmark = pytest.mark.skipif(not splice.available(), reason="splice(2) is Linux-only; CI runs on Linux")

MIB = 1 << 20


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking TCP sockets on 127.0.0.1 (what the proxy's transports hold)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    for s in (a, b):
        s.setblocking(False)
    return a, b


async def send_all(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def recv_exactly(sock: socket.socket, size: int, *, pause: float = 0.0) -> bytes:
    loop, parts, got = asyncio.get_running_loop(), [], 0
    while got < size:
        chunk = await loop.sock_recv(sock, min(size - got, 256 * 1024))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
        if pause:
            await asyncio.sleep(pause)
    return b"".join(parts)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def sockets():
    """client → [source … proxy … destination] → reader: two TCP connections, the proxy's ends in the middle."""
    client, source = tcp_pair()
    destination, reader = tcp_pair()
    yield client, source, destination, reader
    for s in (client, source, destination, reader):
        s.close()


async def test_moves_exactly_count_and_leaves_what_follows(sockets):
    client, source, destination, reader = sockets
    body, after = os.urandom(5 * MIB + 7), b"GET /next HTTP/1.1\r\n\r\n"
    fds = open_fds()
    sender = asyncio.ensure_future(send_all(client, body + after))
    received = asyncio.ensure_future(recv_exactly(reader, len(body)))
    await splice.splice(source.fileno(), destination.fileno(), len(body), read_timeout=5)
    await sender
    assert await received == body
    assert await asyncio.get_running_loop().sock_recv(source, 100) == after   # the next request, untouched
    assert open_fds() == fds                                                  # dups and the pipe closed


async def test_source_closing_early_is_source_broke(sockets):
    client, source, destination, reader = sockets
    await send_all(client, b"x" * MIB)
    client.close()
    drain = asyncio.ensure_future(recv_exactly(reader, 2 * MIB))
    with pytest.raises(splice.SourceBroke, match="closed with"):
        await splice.splice(source.fileno(), destination.fileno(), 2 * MIB, read_timeout=5)
    destination.shutdown(socket.SHUT_WR)
    assert len(await drain) == MIB                                            # what came was passed on


async def test_source_stalling_is_source_broke_after_the_read_timeout(sockets):
    client, source, destination, reader = sockets
    await send_all(client, b"x" * 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(splice.SourceBroke, match="read timeout"):
        await splice.splice(source.fileno(), destination.fileno(), MIB, read_timeout=0.3)
    assert 0.25 < loop.time() - started < 3


async def test_destination_hanging_up_is_destination_gone(sockets):
    client, source, destination, reader = sockets
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reader.close()                                                            # RST: the peer is gone
    sender = asyncio.ensure_future(send_all(client, b"y" * 8 * MIB))
    with pytest.raises(splice.DestinationGone):
        await splice.splice(source.fileno(), destination.fileno(), 8 * MIB, read_timeout=5)
    sender.cancel()


async def test_a_slow_destination_is_waited_for_without_spinning(sockets, monkeypatch, tmp_path):
    """With the pipe full and the destination slow, the copy sleeps until the destination can take
    more: an earlier version kept polling the readable source, thousands of useless calls."""
    client, source, destination, reader = sockets
    calls = []
    real = os.splice

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "splice", counting)
    size = 8 * MIB
    with open(tmp_path / "file", "wb") as fh:
        fh.write(os.urandom(size + 100))
    file = open(tmp_path / "file", "rb")  # noqa: SIM115 -- closed at the end of the test; sent with sendfile from an odd offset, as nginx sends
    sender = asyncio.ensure_future(asyncio.get_running_loop().sock_sendfile(client, file, 100, size))
    received = asyncio.ensure_future(recv_exactly(reader, size, pause=0.002))
    await splice.splice(source.fileno(), destination.fileno(), size, read_timeout=5)
    await sender
    file.close()
    assert len(await received) == size
    assert len(calls) < 2000, f"{len(calls)} splice calls for {size // MIB} MiB"


async def test_unix_sockets_work_too():
    a, source = socket.socketpair()
    destination, b = socket.socketpair()
    for s in (a, source, destination, b):
        s.setblocking(False)
    try:
        data = os.urandom(3 * MIB)
        sender = asyncio.ensure_future(send_all(a, data))
        received = asyncio.ensure_future(recv_exactly(b, len(data)))
        await splice.splice(source.fileno(), destination.fileno(), len(data), read_timeout=5)
        await sender
        assert await received == data
    finally:
        for s in (a, source, destination, b):
            s.close()


def test_socket_fd_refuses_what_cannot_be_spliced():
    class Fake:
        def __init__(self, **extra):
            self.extra, self.closing = extra, False

        def is_closing(self):
            return self.closing

        def get_extra_info(self, name):
            return self.extra.get(name)

    a, b = tcp_pair()
    try:
        assert splice.socket_fd(Fake(socket=a)) == a.fileno()
        assert splice.socket_fd(Fake(socket=a, sslcontext=object())) is None          # TLS: never
        assert splice.socket_fd(Fake()) is None
        closing = Fake(socket=a)
        closing.closing = True
        assert splice.socket_fd(closing) is None
        assert splice.socket_fd(None) is None
    finally:
        a.close()
        b.close()
