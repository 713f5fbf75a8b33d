"""Benchmark: what a bare HTTP relay in Python costs per request — the floor under any Python proxy.

No authentication, no header policy, no logging: one ``asyncio.Protocol`` per client connection on uvloop,
the request head parsed by httptools, a fixed head sent on one upstream keep-alive connection of its own, the
answer parsed and written back in one ``write``. The same four system calls per request as authproxy's
express lane (read, write upstream, read, write back). Its CPU per request, next to authproxy's, says how much
of authproxy's is Python around those calls (``proxy/express.py`` cites it).

    python bench/bare_relay.py [--duration 3] [--rounds 2]

Starts nginx (``/tiny``) and the relay (this file with ``--serve``), runs wrk at 32 and at 1 connection, and
prints requests/s and CPU µs per request of the relay, split into user and system time (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import Stack, free_port, group_pids, run_bounded, wait_port


class _Upstream(asyncio.Protocol):
    """The relay's connection to the app: parses answers and writes each back to its client."""

    def __init__(self, client: _Client) -> None:
        import httptools
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.fields, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        head = [b"HTTP/1.1 200 OK\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.fields if name.lower() != b"connection"]
        if self.client.transport is not None:
            self.client.transport.write(b"".join([*head, b"\r\n", *self.body]))


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        import httptools
        self.upstream_port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.waiting: list[bytes] = []
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, self.upstream = await asyncio.get_running_loop().create_connection(
            lambda: _Upstream(self), "127.0.0.1", self.upstream_port)
        for head in self.waiting:
            self._send(head)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        head = b"GET " + self.url + b" HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        if self.upstream is None or self.upstream.transport is None:
            self.waiting.append(head)
        else:
            self._send(head)

    def _send(self, head: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(head)


def serve(port: int, upstream_port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream_port), "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    uvloop.run(main())


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user, system


def measure(url: str, pids: list[int], connections: int, duration: float) -> str:
    hz = 100
    user0, system0 = cpu_ticks(pids)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}", url], capture_output=True,
                         text=True, check=True).stdout
    user1, system1 = cpu_ticks(pids)
    count = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    per = 1e6 / hz / count
    user, system = (user1 - user0) * per, (system1 - system0) * per
    return (f"{connections:>3} conn: {count / duration:9.0f} req/s, CPU µs/req {user + system:6.1f}"
            f" (user {user:5.1f}, system {system:5.1f})")


async def main(args: argparse.Namespace) -> int:
    async with Stack() as stack:
        _, upstream = await stack.nginx()
        port = free_port()
        relay = await stack.spawn("bare-relay", [sys.executable, __file__, "--serve", str(port),
                                                 upstream.rsplit(":", 1)[1]])
        await wait_port(port, relay, "bare relay")
        pids = group_pids(relay.pid)
        for rnd in range(args.rounds):
            for connections in (32, 1):
                line = await asyncio.to_thread(measure, f"http://127.0.0.1:{port}/tiny", pids, connections,
                                               args.duration)
                print(f"round {rnd + 1}, {line}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    sys.exit(run_bounded(lambda: main(parser.parse_args()), time_limit=300))
