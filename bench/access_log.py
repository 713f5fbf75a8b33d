"""Benchmark: the CPU one access line costs, through the stdlib logger and through logs.AccessWriter.

In one process, no server: the same access line (the parts boundary.py passes for a tiny GET) written N times
to a file (``/dev/null`` by default, or ``--to FILE``) in the text and the JSON format, each way in turn for
a few rounds; CPU time of the whole process (the writer's thread included) per line, the median over rounds.
Then the whole call site, ``boundary._log_access``, for a signed-in request (metrics counted in every case).
A tiny proxied GET costs authproxy about 130-240 µs of CPU (bench/run.py), so the line's share of it follows.

    python bench/access_log.py [--lines 20000] [--rounds 5]

``--site-only off|text|json`` runs only ``--lines`` calls of the call site, untimed, for an instruction count
that the machine's load does not move: the difference of two runs under callgrind, divided by the difference
in calls, is the instructions per call (``valgrind --tool=callgrind python bench/access_log.py --site-only text
--lines 1000``, then ``--lines 5000``; run the interpreter's binary, not a pyenv shim).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.logs import ACCESS_LOG, AccessLog, AccessWriter, JsonFormatter, TextFormatter

# AccessLog.request's arguments for a tiny GET: method, path, status, seconds, user, request id, client,
# upstream, suffix, fields (a WebSocket's), trace id.
PARTS = ("GET", "/tiny", 200, 0.000412, "248289761001", "a1b2c3d4e5f6a7b8-1f", "127.0.0.1", "/", "", {}, None)


async def lines(access: AccessLog, count: int) -> float:
    """CPU seconds per line, ``count`` lines logged as boundary.py logs them, everything written."""
    started = time.process_time()
    for _ in range(count):
        if access.isEnabledFor(logging.INFO):
            access.request(*PARTS)
        if _ % 256 == 0:
            await asyncio.sleep(0)                  # let the flush timer run, as the server's loop would
    if access.writer is not None:
        access.writer.close()
    for handler in logging.getLogger().handlers:
        handler.flush()
    return (time.process_time() - started) / count


def signed_in_request() -> web.Request:
    """A mocked GET /tiny as ``_log_access`` sees it after the proxy answered: an id, an upstream, a session."""
    from aiohttp.test_utils import make_mocked_request

    from proxy.context import REQUEST_ID
    from proxy.session import SESSION_STATE
    from proxy.upstream import UPSTREAM_LABEL

    request = make_mocked_request("GET", "/tiny", headers={"Cookie": "_authproxy=x", "User-Agent": "wrk"})
    request[REQUEST_ID], request[UPSTREAM_LABEL] = PARTS[5], PARTS[7]
    session = SimpleNamespace(identity=SimpleNamespace(sub=PARTS[4]))
    request[SESSION_STATE] = SimpleNamespace(peek=lambda: session)          # SessionState's one method used here
    return request


def call_site_mode(mode: str, out: TextIO) -> None:
    """Log off (``off``: level warning), through the stdlib (``stdlib``), or through an AccessWriter (text, json)."""
    root = logging.getLogger()
    root.handlers[:], ACCESS_LOG.writer = [], None
    root.setLevel(logging.WARNING if mode == "off" else logging.INFO)
    if mode == "stdlib":
        handler = logging.StreamHandler(out)
        handler.setFormatter(TextFormatter())
        root.handlers[:] = [handler]
    elif mode in ("text", "json"):
        ACCESS_LOG.writer = AccessWriter(mode, out.fileno())


async def call_site(out: TextIO, count: int, rounds: int) -> None:
    """``boundary._log_access`` as a request calls it (metrics included): log off / stdlib (text) / AccessWriter."""
    from proxy import boundary
    from proxy.metrics import Metrics

    metrics, request = Metrics(), signed_in_request()

    def per_call() -> float:
        started = time.process_time()
        for n in range(count):
            boundary._log_access(request, 200, 0.0004, metrics)
            if n % 256 == 255 and ACCESS_LOG.writer is not None:
                ACCESS_LOG.writer.flush()               # what the timer does, in batches of a busy interval's size
        if ACCESS_LOG.writer is not None:
            ACCESS_LOG.stop_writer()
        return (time.process_time() - started) / count

    results: dict[str, list[float]] = {}
    names = {"off": "log off (level warning)", "stdlib": "stdlib logging, text", "text": "AccessWriter, text",
             "json": "AccessWriter, json"}
    for _ in range(rounds):
        for mode, name in names.items():
            call_site_mode(mode, out)
            results.setdefault(name, []).append(per_call())
    logging.getLogger().handlers[:] = []
    print(f"\nboundary._log_access, signed-in GET: µs CPU per call (median of {rounds} rounds of {count:,})")
    for name, values in results.items():
        print(f"{name:<24} {statistics.median(values) * 1e6:>6.1f}   [{' '.join(f'{v * 1e6:.1f}' for v in values)}]")


async def site_only(mode: str, count: int, to: str) -> None:
    """``count`` calls of the call site in ``mode``, untimed: for callgrind (see the module's docstring)."""
    from proxy import boundary
    from proxy.metrics import Metrics

    metrics, request = Metrics(), signed_in_request()
    with open(to, "a") as out:
        call_site_mode(mode, out)
        for n in range(count):
            boundary._log_access(request, 200, 0.0004, metrics)
            if n % 256 == 255 and ACCESS_LOG.writer is not None:
                ACCESS_LOG.writer.flush()
        ACCESS_LOG.stop_writer()


async def main(args: argparse.Namespace) -> None:
    if args.site_only:
        await site_only(args.site_only, args.lines, args.to)
        return
    root = logging.getLogger()
    results: dict[str, list[float]] = {}
    with open(args.to, "a") as out:
        for _ in range(args.rounds):
            for fmt in ("text", "json"):
                handler = logging.StreamHandler(out)
                handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
                root.handlers[:] = [handler]
                root.setLevel(logging.INFO)
                access = AccessLog()
                results.setdefault(f"{fmt}, stdlib logging", []).append(await lines(access, args.lines))
                access.writer = AccessWriter(fmt, out.fileno())
                results.setdefault(f"{fmt}, AccessWriter", []).append(await lines(access, args.lines))
    root.handlers[:] = []
    print(f"{'':<22} {'µs CPU per line':>16}   (median of {args.rounds} rounds of {args.lines:,} lines to {args.to})")
    for name, values in results.items():
        print(f"{name:<22} {statistics.median(values) * 1e6:>16.1f}   [{' '.join(f'{v * 1e6:.1f}' for v in values)}]")
    for fmt in ("text", "json"):
        old, new = (statistics.median(results[f"{fmt}, {w}"]) for w in ("stdlib logging", "AccessWriter"))
        print(f"{fmt}: AccessWriter / stdlib = {new / old:.2f}")
    with open(args.to, "a") as out:
        await call_site(out, args.lines, args.rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--to", default="/dev/null", help="the file written to (default /dev/null)")
    parser.add_argument("--site-only", choices=("off", "stdlib", "text", "json"),
                        help="only --lines calls of boundary._log_access in this mode, untimed (for callgrind)")
    asyncio.run(main(parser.parse_args()))
