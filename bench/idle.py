"""Benchmark: what authproxy (one process) and Apache + mod_auth_openidc pay, in memory, for idle keep-alive
connections and idle authenticated WebSockets, and what holding them does to the tiny-GET rate (issue 15).

Starts nginx (``/tiny``), an aiohttp WebSocket echo app (bench/soak_upstream.py, a process of its own), the
real oidc-provider, and in front of both ``python -m proxy`` (one process) and Apache httpd with
mod_auth_openidc (bench/stack.py's, with the changes below): ``/ws`` → the echo app, ``/`` → nginx. Signs one
user in to each through the provider's login form, once; every request and socket below carries that
session's cookie. Then, per target in turn (``--targets``), each phase measured on the resident memory of all
the target's processes (VmRSS summed; PSS too, which shares Apache's common pages out among its processes):

1. **keep-alive**: ``--connections`` raw sockets each send one authenticated ``GET /tiny``, read the answer
   and stay open, idle. Memory per connection = (held − before) / N.
2. **WebSocket**: ``--websockets`` raw sockets each complete an authenticated WebSocket handshake (the proxy
   then holds two connections per socket: the client's and its own to the app) and stay idle.

The memory while held is read ``--idle-seconds`` after the last one opened. Before, while held and after
closing (once the target's descriptor count is back down), the memory; and a short wrk run of tiny
authenticated GETs (``--rate-seconds``, 8 connections) whose rate while held is reported as a ratio to the
rate before, measured in the same run. Then the ratios authproxy / Apache.

Apache is given what it needs to hold them (printed at start): its keep-alive and proxy timeouts raised
like authproxy's; mod_proxy_wstunnel for ``/ws`` (``ProxyPass ws://``), where each proxied WebSocket keeps a
worker thread for its life, so ``ServerLimit`` × ``ThreadsPerChild`` (64, the default ``ThreadLimit``) is
raised to cover the sockets; and ``AsyncRequestWorkerFactor`` raised so that the event MPM's processes may
hold the idle keep-alive connections (by default a process takes about 3 connections per worker thread).
Otherwise Debian's numbers (2 processes to start, spare threads 25–75): Apache grows while they are held and
shrinks after.

``--trace`` runs the proxy under tracemalloc (bench/traced.py) and prints the allocation sites that grew
while the connections were held.

    python bench/idle.py                                 # 9,000 connections, 5,000 WebSockets, both targets
    python bench/idle.py --connections 5000 --websockets 2000
    python bench/idle.py --targets authproxy --connections 2000 --websockets 1000 --trace

Only 127.0.0.1; every process is stopped on exit, and the run has a hard time limit. The file limit of
this process is raised to its hard limit (the client side holds one descriptor per connection) and the
counts are capped to what it allows (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import pickle
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import (APACHE_MODULES, Proc, Stack, clients_for, free_port, group_pids, login, run_bounded,
                   source_version, wait_port)
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
# Descriptors this process keeps for itself (wrk's pipes, the provider's, the loop's) besides the held sockets.
SPARE_FDS = 300
# Seconds idle connections may stay open on both targets (their keep-alive and proxy timeouts).
IDLE_TIMEOUT = 600
# Apache's worker threads per process: the event MPM's default ThreadLimit, so only ServerLimit must grow.
APACHE_THREADS = 64
# Apache: worker threads kept beyond the WebSockets' (Debian's MaxRequestWorkers is 150).
APACHE_SPARE_WORKERS = 150
# Seconds Apache gets to stop shrinking (it stops a spare process a second) before memory is read.
SETTLE_TIMEOUT = 30.0


def apache_extra(ws_port: int, connections: int, websockets: int) -> tuple[str, str]:
    """What Apache needs on top of bench/stack.py's configuration to hold ``connections`` idle keep-alive
    connections and ``websockets`` idle proxied WebSockets, and a one-line summary of it."""
    server_limit = math.ceil((websockets + APACHE_SPARE_WORKERS) / APACHE_THREADS)
    workers = server_limit * APACHE_THREADS
    # The event MPM lets a process hold ThreadsPerChild + AsyncRequestWorkerFactor × its idle threads
    # connections; Apache keeps at least 2 processes (StartServers) with most threads idle.
    factor = max(2, math.ceil(connections / (2 * APACHE_THREADS)) + 1)
    conf = f"""
LoadModule proxy_wstunnel_module {APACHE_MODULES}/mod_proxy_wstunnel.so
ServerLimit {server_limit}
ThreadLimit {APACHE_THREADS}
ThreadsPerChild {APACHE_THREADS}
MaxRequestWorkers {workers}
AsyncRequestWorkerFactor {factor}
KeepAliveTimeout {IDLE_TIMEOUT}
Timeout {IDLE_TIMEOUT}
ProxyTimeout {IDLE_TIMEOUT}
<Location /ws>
  ProxyPass ws://127.0.0.1:{ws_port}/ws
</Location>
"""
    summary = (f"ServerLimit {server_limit}, ThreadsPerChild {APACHE_THREADS}, MaxRequestWorkers {workers}, "
               f"AsyncRequestWorkerFactor {factor}, KeepAliveTimeout/Timeout/ProxyTimeout {IDLE_TIMEOUT}, "
               f"mod_proxy_wstunnel for /ws")
    return conf, summary


@dataclass
class Memory:
    """Resident memory of a process group, KiB: RSS summed over its processes (pages they share counted in
    each), and PSS summed (each shared page split among its sharers: what the group costs the machine)."""

    rss: int = 0
    pss: int = 0
    processes: int = 0
    threads: int = 0


def memory(pgid: int) -> Memory:
    total = Memory()
    for pid in group_pids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:                                    # it exited meanwhile
            continue
        fields = {line.split(":", 1)[0]: line.split()[1] for line in status + rollup if ":" in line
                  and len(line.split()) > 1}
        total.rss += int(fields.get("VmRSS", 0))
        total.pss += int(fields.get("Pss", 0))
        total.threads += int(fields.get("Threads", 0))
        total.processes += 1
    if not total.processes:
        raise RuntimeError(f"no process left in group {pgid}")
    return total


def fd_count(pgid: int) -> int:
    """Open descriptors of all the processes of a group."""
    count = 0
    for pid in group_pids(pgid):
        try:
            count += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return count


async def settled(pgid: int) -> None:
    """Wait until the group's process count has not changed for two seconds (Apache stops its spare
    processes one a second after a burst), at most SETTLE_TIMEOUT; then SETTLE more seconds."""
    started = last_change = time.monotonic()
    count = len(group_pids(pgid))
    while time.monotonic() - last_change < 2 and time.monotonic() - started < SETTLE_TIMEOUT:
        await asyncio.sleep(0.25)
        now = len(group_pids(pgid))
        if now != count:
            count, last_change = now, time.monotonic()
    await asyncio.sleep(SETTLE)


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
    """Seconds until the group's descriptors are back to ``fds`` (plus a little slack) or have not gone down
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
    target: str
    name: str
    count: int
    before: Memory = field(default_factory=Memory)
    held: Memory = field(default_factory=Memory)
    after: Memory = field(default_factory=Memory)
    rate_before: float = 0.0
    rate_held: float = 0.0
    open_s: float = 0.0
    drain_s: float = 0.0

    @property
    def per_connection(self) -> float:
        """RSS per connection, KiB."""
        return (self.held.rss - self.before.rss) / self.count if self.count else 0.0

    @property
    def pss_per_connection(self) -> float:
        return (self.held.pss - self.before.pss) / self.count if self.count else 0.0

    @property
    def rate_ratio(self) -> float:
        return self.rate_held / self.rate_before if self.rate_before else 0.0

    def row(self) -> str:
        return (f"| {self.target} | {self.name} | {self.count:,} | {self.before.rss / 1024:.0f} | "
                f"{self.held.rss / 1024:.0f} | **{self.per_connection:.1f}** | {self.pss_per_connection:.1f} | "
                f"{self.held.processes} / {self.held.threads} | {self.after.rss / 1024:.0f} | {self.rate_ratio:.2f} |")


async def tiny_rate(url: str, cookie: str, seconds: float) -> float:
    """Tiny authenticated GETs per second at 8 connections. A few read errors are Apache's event MPM closing
    the keep-alive connections of a child it stops (more spare threads than MaxSpareThreads; wrk
    reconnects): tolerated below 0.1 % of requests, as bench/run.py does; answers ≥ 400 never."""
    result = await run_wrk(url + "/tiny", connections=8, duration=seconds, cookie=cookie)
    if result.errors.get("status") or result.error_count > max(1, result.requests // 1000):
        raise RuntimeError(f"wrk saw errors: {result.errors} in {result.requests} requests")
    if result.error_count:
        print(f"  (wrk: {result.errors} in {result.requests:,} requests)")
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
    await settled(pid)
    phase.rate_before = await tiny_rate(url, cookie, args.rate_seconds)
    await settled(pid)
    fds = fd_count(pid)
    phase.before = memory(pid)
    first = await snapshot(proc, trace_dir) if trace_dir else None
    started = time.monotonic()
    held = await open_many(port, request, phase.count, expect)
    phase.open_s = time.monotonic() - started
    await asyncio.sleep(args.idle_seconds)
    phase.held = memory(pid)
    if trace_dir and first:
        print_growth(first, await snapshot(proc, trace_dir), phase.count, args.top)
    phase.rate_held = await tiny_rate(url, cookie, args.rate_seconds)
    for transport in held:
        transport.close()
    held.clear()
    phase.drain_s = await drained(pid, fds)
    await settled(pid)
    phase.after = memory(pid)
    print(f"{phase.target}, {phase.name}: opened {phase.count:,} in {phase.open_s:.1f}s; RSS "
          f"{phase.before.rss / 1024:.1f} → {phase.held.rss / 1024:.1f} MiB ({phase.per_connection:.1f} KiB each; "
          f"PSS {phase.pss_per_connection:.1f}) with {phase.held.processes} processes, {phase.held.threads} "
          f"threads → {phase.after.rss / 1024:.1f} MiB after closing (drained in {phase.drain_s:.1f}s, "
          f"{phase.after.processes} processes); tiny GET {phase.rate_before:.0f} req/s before, "
          f"{phase.rate_held:.0f} while held", flush=True)


def print_ratios(phases: list[Phase]) -> None:
    """authproxy / Apache for each kind of phase both targets ran."""
    by = {(p.target, p.name): p for p in phases}
    names = [p.name for p in phases if p.target == "authproxy" and ("apache", p.name) in by]
    if not names:
        return
    print("\n| authproxy / Apache | RSS per connection | PSS per connection | tiny GET held/before "
          "| RSS after closing, MiB (authproxy; Apache) |")
    print("|---|---|---|---|---|")
    for name in names:
        a, b = by["authproxy", name], by["apache", name]
        print(f"| {name} | **{a.per_connection / b.per_connection:.2f}×** | "
              f"{a.pss_per_connection / b.pss_per_connection:.2f}× | {a.rate_ratio / b.rate_ratio:.2f}× | "
              f"{a.after.rss / 1024:.0f} ({a.after.rss / 1024 - a.before.rss / 1024:+.0f}); "
              f"{b.after.rss / 1024:.0f} ({b.after.rss / 1024 - b.before.rss / 1024:+.0f}) |")


def caps(args: argparse.Namespace) -> int:
    """Raise this process's file limit to its hard limit; lower the counts to what it allows; the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard == resource.RLIM_INFINITY:
        return hard
    # The client holds one descriptor per socket; authproxy, which inherits this limit, two per WebSocket.
    for name, most in (("connections", hard - SPARE_FDS), ("websockets", (hard - SPARE_FDS) // 2)):
        if getattr(args, name) > most:
            print(f"the file limit (hard limit {hard}) caps --{name} at {most:,} (asked {getattr(args, name):,})")
            setattr(args, name, most)
    return hard


async def main(args: argparse.Namespace) -> int:
    hard = caps(args)
    needed = max(args.connections, args.websockets) + 256
    async with Stack(keep=args.keep) as stack:
        _, nginx_url = await stack.nginx()
        ws_port = free_port()
        ws_app = await stack.spawn("ws-app", [sys.executable, str(HERE / "soak_upstream.py"), "--port", str(ws_port)])
        await wait_port(ws_port, ws_app, "ws-app")
        port, apache_port = free_port(), free_port()
        idp = await stack.idp(clients=clients_for(port, apache_port))
        trace_dir = stack.root / "trace" if args.trace else None
        if trace_dir:
            trace_dir.mkdir()
            os.environ["TRACE_DIR"] = str(trace_dir)
        targets: list[tuple[str, Proc, str, int, str]] = []
        print(f"file limit of this process (hard): {hard}; load average {os.getloadavg()[0]:.1f}", flush=True)
        if "authproxy" in args.targets:
            limits = {"max_connections": needed, "websockets_per_session": min(max(args.websockets, 1), 10000),
                      "keepalive_timeout": IDLE_TIMEOUT, "header_timeout": IDLE_TIMEOUT}
            proc, url = await stack.authproxy(
                port, idp.issuer, nginx_url, source=Path(args.authproxy_src).resolve(), limits=limits,
                extra_upstreams=[{"path": "/ws", "url": f"http://127.0.0.1:{ws_port}", "websockets": True}],
                launcher=[str(HERE / "traced.py")] if trace_dir else None)
            cookie = await login(url + "/tiny", lambda name: name.startswith("_authproxy"))
            targets.append(("authproxy", proc, url, port, cookie))
            print(f"authproxy {source_version(Path(args.authproxy_src))} (pid {proc.pid}), one process"
                  f"{'; traced' if trace_dir else ''}", flush=True)
        if "apache" in args.targets:
            extra, summary = apache_extra(ws_port, args.connections, args.websockets)
            proc, url = await stack.apache(apache_port, idp.issuer, nginx_url,
                                           extra_conf=extra + "".join(line + "\n" for line in args.apache_conf))
            cookie = await login(url + "/tiny", lambda name: name == "mod_auth_openidc_session")
            targets.append(("apache", proc, url, apache_port, cookie))
            print(f"Apache + mod_auth_openidc (pid {proc.pid}): {summary}"
                  + "".join(f"; {line}" for line in args.apache_conf), flush=True)
        phases = []
        for target, proc, url, target_port, cookie in targets:
            host = f"127.0.0.1:{target_port}"
            get = f"GET /tiny HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode()
            upgrade = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: Upgrade\r\n"
                       f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
                       ).encode()
            await tiny_rate(url, cookie, 1)                # warm-up: the upstream pool, the session cache
            tracing = trace_dir if target == "authproxy" else None
            if args.connections:
                phases.append(Phase(target, "idle keep-alive connections", args.connections))
                await measure(phases[-1], proc, url, target_port, cookie, get, b"HTTP/1.1 200", args, tracing)
            if args.websockets:
                phases.append(Phase(target, "idle WebSockets (both sides)", args.websockets))
                await measure(phases[-1], proc, url, target_port, cookie, upgrade, b"HTTP/1.1 101", args, tracing)
        print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, authproxy "
              f"{source_version(Path(args.authproxy_src))}, idle {args.idle_seconds:.0f}s, load average "
              f"{os.getloadavg()[0]:.1f}")
        print("| target | what | count | RSS before, MiB | held, MiB | RSS KiB each | PSS KiB each "
              "| processes / threads held | RSS after closing, MiB | tiny GET rate held / before |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for phase in phases:
            print(phase.row())
        print_ratios(phases)
        if args.json:
            Path(args.json).write_text(json.dumps(
                [{k: v for k, v in vars(p).items() if k not in ("before", "held", "after")}
                 | {"before": vars(p.before), "held": vars(p.held), "after": vars(p.after),
                    "per_connection_kib": p.per_connection, "pss_per_connection_kib": p.pss_per_connection}
                 for p in phases], indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=9000, help="idle keep-alive connections (default 9000)")
    parser.add_argument("--websockets", type=int, default=5000, help="idle WebSockets (default 5000, at most 10000)")
    parser.add_argument("--targets", default="authproxy,apache",
                        help="which to measure, in this order (default authproxy,apache)")
    parser.add_argument("--rate-seconds", type=float, default=3.0, help="seconds of each wrk run (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=25.0,
                        help="seconds the connections stay idle before RSS is read (default 25: an idle connection "
                             "is parked within 0.5-1 s, before 508b1f0 after 10-20 s; proxy/connections.py "
                             "SHED_INTERVAL)")
    parser.add_argument("--apache-conf", action="append", default=[], metavar="LINE",
                        help="one more line of Apache configuration (repeatable), e.g. 'MaxMemFree 64'")
    parser.add_argument("--trace", action="store_true", help="run the proxy under tracemalloc, print what grew")
    parser.add_argument("--top", type=int, default=15, help="allocation sites printed with --trace (default 15)")
    parser.add_argument("--authproxy-src", default=str(HERE.parent), metavar="DIR",
                        help="the checkout whose proxy/ runs (default: this one)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="hard limit for the whole run (default 900 s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    raise SystemExit(run_bounded(lambda: main(arguments), arguments.time_limit))
