"""Benchmark: what one authproxy process pays, in memory, for idle keep-alive connections and idle WebSockets.

Starts nginx (``/tiny``), an aiohttp WebSocket echo app (bench/soak_upstream.py, a process of its own), the
real oidc-provider and ``python -m proxy`` (one process) in front of both: ``/ws`` → the echo app, ``/`` →
nginx. Signs one user in through the provider's login form, once; every request and socket below carries
that session's cookie. Then, each phase measured on the proxy's resident memory (VmRSS):

1. **keep-alive**: ``--connections`` raw sockets each send one authenticated ``GET /tiny``, read the answer
   and stay open, idle. RSS per connection = (RSS held − RSS before) / N.
2. **WebSocket**: ``--websockets`` raw sockets each complete an authenticated WebSocket handshake (the proxy
   then holds two connections per socket: the client's and its own to the app) and stay idle.

The RSS while held is read ``--idle-seconds`` after the last one opened (the proxy sheds per-connection
state of connections idle for 10–20 s). Before, while held and after closing (once the proxy's descriptor
count is back down), the RSS; and a short wrk run of tiny authenticated GETs (``--rate-seconds``, 8
connections) whose rate while held is reported as a ratio to the rate before, measured in the same run.
``--trace`` runs the proxy under tracemalloc (bench/traced.py) and prints the allocation sites that grew
while the connections were held.

    python bench/idle.py                                 # 9,000 connections, 5,000 WebSockets
    python bench/idle.py --connections 2000 --websockets 1000 --trace

Only 127.0.0.1; every process is stopped on exit, and the run has a hard time limit. The file limit of
this process is raised to its hard limit (the client side holds one descriptor per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pickle
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import Proc, Stack, clients_for, free_port, login, run_bounded, source_version, wait_port
from wrk import run_wrk

HERE = Path(__file__).resolve().parent
# Connections opened at once while filling up (the proxy's accept backlog is 1024).
OPENING = 200
# Seconds to let the proxy settle before reading its RSS (timers fire, buffers drain).
SETTLE = 2.0
# Seconds to wait for the proxy to let go of closed connections.
DRAIN_TIMEOUT = 60.0
# A socket key for the WebSocket handshake (RFC 6455 §4.1): any 16 bytes, base64.
WS_KEY = base64.b64encode(b"authproxy-idle-b").decode()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Holder(asyncio.Protocol):
    """A client connection that sends one request head and waits for the answer's head (and a short body)."""

    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request, self.done, self.buffer = request, done, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep or self.done.done():
            return
        if head.startswith(b"HTTP/1.1 101"):
            self.done.set_result(head)
            return
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if len(body) >= length:
            self.done.set_result(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before an answer: {self.buffer[:200]!r}"))


async def open_many(port: int, request: bytes, count: int, expect: bytes) -> list[asyncio.Transport]:
    """``count`` connections that each got an answer whose status line starts with ``expect``."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING)
    held: list[asyncio.Transport] = []

    async def one() -> None:
        async with gate:
            done: asyncio.Future[bytes] = loop.create_future()
            transport, _ = await loop.create_connection(lambda: Holder(request, done), "127.0.0.1", port)
            held.append(transport)  # type: ignore[arg-type]
            head = await asyncio.wait_for(done, 30)
            if not head.startswith(expect):
                raise RuntimeError(f"expected {expect!r}, got {head[:200]!r}")

    await asyncio.gather(*(one() for _ in range(count)))
    return held


async def drained(pid: int, fds: int) -> float:
    """Seconds until the proxy's descriptors are back to ``fds`` (plus a little slack) or have not gone down
    for two seconds (its pool to the upstream may have grown), at most DRAIN_TIMEOUT."""
    started = last_change = time.monotonic()
    last = fd_count(pid)
    while last > fds + 16 and time.monotonic() - last_change < 2 and time.monotonic() - started < DRAIN_TIMEOUT:
        await asyncio.sleep(0.25)
        now = fd_count(pid)
        if now < last:
            last, last_change = now, time.monotonic()
    return last_change - started


@dataclass
class Phase:
    name: str
    count: int
    rss_before: int = 0
    rss_held: int = 0
    rss_after: int = 0
    rate_before: float = 0.0
    rate_held: float = 0.0
    open_s: float = 0.0
    drain_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def per_connection(self) -> float:
        return (self.rss_held - self.rss_before) / self.count if self.count else 0.0

    def row(self) -> str:
        return (f"| {self.name} | {self.count:,} | {self.rss_before / 1024:.0f} | {self.rss_held / 1024:.0f} | "
                f"**{self.per_connection:.1f}** | {self.rss_after / 1024:.0f} | "
                f"{self.rate_held / self.rate_before if self.rate_before else 0:.2f} |")


async def tiny_rate(url: str, cookie: str, seconds: float) -> float:
    result = await run_wrk(url + "/tiny", connections=8, duration=seconds, cookie=cookie)
    if result.error_count:
        raise RuntimeError(f"wrk saw errors: {result.errors}")
    return result.rps


async def snapshot(proc: Proc, trace_dir: Path) -> Path:
    """Ask the traced proxy for a tracemalloc snapshot and wait until it is written."""
    count = len(list(trace_dir.glob("snapshot-*.pickle")))
    os.kill(proc.pid, 10)                                  # SIGUSR1
    path = trace_dir / f"snapshot-{count}.pickle"
    for _ in range(600):
        await asyncio.sleep(0.1)
        if path.exists():
            size = path.stat().st_size
            await asyncio.sleep(0.3)
            if size and path.stat().st_size == size:
                return path
    raise RuntimeError("no tracemalloc snapshot")


def print_growth(before: Path, held: Path, count: int, top: int) -> None:
    """The allocation sites that grew the most between two snapshots, in bytes per connection."""
    with before.open("rb") as a, held.open("rb") as b:
        first, second = pickle.load(a), pickle.load(b)
    stats = second.compare_to(first, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"  traced Python heap grew {total / count:.0f} B per connection; the largest sites:")
    for stat in stats[:top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback if "asyncio" not in f.filename
                  or f is stat.traceback[-1]][-4:]
        where = " ← ".join(reversed(frames))
        print(f"  {stat.size_diff / count:8.0f} B  {stat.count_diff / count:5.2f} blocks  {where}")


async def measure(phase: Phase, proc: Proc, url: str, port: int, cookie: str, request: bytes, expect: bytes,
                  args: argparse.Namespace, trace_dir: Path | None) -> None:
    pid = proc.pid
    for transport in await open_many(port, request, OPENING, expect):    # the upstream pool at its size
        transport.close()
    phase.rate_before = await tiny_rate(url, cookie, args.rate_seconds)
    await asyncio.sleep(SETTLE)
    fds = fd_count(pid)
    phase.rss_before = rss_kib(pid)
    first = await snapshot(proc, trace_dir) if trace_dir else None
    started = time.monotonic()
    held = await open_many(port, request, phase.count, expect)
    phase.open_s = time.monotonic() - started
    await asyncio.sleep(args.idle_seconds)
    phase.rss_held = rss_kib(pid)
    if trace_dir and first:
        print_growth(first, await snapshot(proc, trace_dir), phase.count, args.top)
    phase.rate_held = await tiny_rate(url, cookie, args.rate_seconds)
    for transport in held:
        transport.close()
    held.clear()
    phase.drain_s = await drained(pid, fds)
    await asyncio.sleep(SETTLE)
    phase.rss_after = rss_kib(pid)
    print(f"{phase.name}: opened {phase.count:,} in {phase.open_s:.1f}s; RSS {phase.rss_before / 1024:.1f} → "
          f"{phase.rss_held / 1024:.1f} MiB ({phase.per_connection:.1f} KiB each) → {phase.rss_after / 1024:.1f} MiB "
          f"after closing (drained in {phase.drain_s:.1f}s); tiny GET {phase.rate_before:.0f} req/s before, "
          f"{phase.rate_held:.0f} while held", flush=True)


async def main(args: argparse.Namespace) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(args.connections, args.websockets) + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"this process may open only {hard} files; {needed} needed")
    async with Stack(keep=args.keep) as stack:
        _, nginx_url = await stack.nginx()
        ws_port = free_port()
        ws_app = await stack.spawn("ws-app", [sys.executable, str(HERE / "soak_upstream.py"), "--port", str(ws_port)])
        await wait_port(ws_port, ws_app, "ws-app")
        port = free_port()
        idp = await stack.idp(clients=clients_for(port, free_port()))
        trace_dir = stack.root / "trace" if args.trace else None
        if trace_dir:
            trace_dir.mkdir()
            os.environ["TRACE_DIR"] = str(trace_dir)
        limits = {"max_connections": needed, "websockets_per_session": min(max(args.websockets, 1), 10000),
                  "keepalive_timeout": 600, "header_timeout": 600}
        proc, url = await stack.authproxy(
            port, idp.issuer, nginx_url, source=Path(args.authproxy_src).resolve(), limits=limits,
            extra_upstreams=[{"path": "/ws", "url": f"http://127.0.0.1:{ws_port}", "websockets": True}],
            launcher=[str(HERE / "traced.py")] if trace_dir else None)
        cookie = await login(url + "/tiny", lambda name: name.startswith("_authproxy"))
        print(f"authproxy {source_version(Path(args.authproxy_src))} (pid {proc.pid}), one process; "
              f"load average {os.getloadavg()[0]:.1f}{'; traced' if trace_dir else ''}", flush=True)
        host = f"127.0.0.1:{port}"
        get = f"GET /tiny HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode()
        upgrade = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: Upgrade\r\n"
                   f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n").encode()
        await tiny_rate(url, cookie, 1)                    # warm-up: the upstream pool, the session cache
        phases = []
        if args.connections:
            phases.append(Phase("idle keep-alive connections", args.connections))
            await measure(phases[-1], proc, url, port, cookie, get, b"HTTP/1.1 200", args, trace_dir)
        if args.websockets:
            phases.append(Phase("idle WebSockets (both sides)", args.websockets))
            await measure(phases[-1], proc, url, port, cookie, upgrade, b"HTTP/1.1 101", args, trace_dir)
        print("\n| what | count | RSS before, MiB | held, MiB | KiB each | after closing, MiB "
              "| tiny GET rate held / before |")
        print("|---|---|---|---|---|---|---|")
        for phase in phases:
            print(phase.row())
        if args.json:
            Path(args.json).write_text(json.dumps([vars(p) | {"per_connection_kib": p.per_connection}
                                                   for p in phases], indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=9000, help="idle keep-alive connections (default 9000)")
    parser.add_argument("--websockets", type=int, default=5000, help="idle WebSockets (default 5000, at most 10000)")
    parser.add_argument("--rate-seconds", type=float, default=3.0, help="seconds of each wrk run (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=25.0,
                        help="seconds the connections stay idle before RSS is read (default 25: an idle connection "
                             "is parked within 0.5-1 s, before 508b1f0 after 10-20 s; proxy/connections.py "
                             "SHED_INTERVAL)")
    parser.add_argument("--trace", action="store_true", help="run the proxy under tracemalloc, print what grew")
    parser.add_argument("--top", type=int, default=15, help="allocation sites printed with --trace (default 15)")
    parser.add_argument("--authproxy-src", default=str(HERE.parent), metavar="DIR",
                        help="the checkout whose proxy/ runs (default: this one)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="hard limit for the whole run (default 600 s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    raise SystemExit(run_bounded(lambda: main(arguments), arguments.time_limit))
