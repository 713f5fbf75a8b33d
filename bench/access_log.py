"""Benchmark: the CPU one access line costs, through the stdlib logger and through logs.AccessWriter.

In one process, no server: the same access line (the fields boundary.py logs for a tiny GET) written N times
to a file (``/dev/null`` by default, or ``--to FILE``) in the text and the JSON format, each way in turn for
a few rounds; CPU time of the whole process (the writer's thread included) per line, the median over rounds.
A tiny proxied GET costs authproxy about 130-240 µs of CPU (bench/run.py), so the line's share of it follows.

    python bench/access_log.py [--lines 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.logs import AccessLog, AccessWriter, JsonFormatter, TextFormatter

ARGS = ("GET", "/tiny", 200, 0.412, "alice", "a1b2c3d4e5f6a7b8-1f")
FIELDS = {"event": "request", "request_id": ARGS[5], "client": "127.0.0.1", "user": "alice", "method": "GET",
          "path": "/tiny", "status": 200, "upstream": "/", "duration_ms": 0.41}


async def lines(access: AccessLog, count: int) -> float:
    """CPU seconds per line, ``count`` lines logged as boundary.py logs them, everything written."""
    started = time.process_time()
    for _ in range(count):
        if access.isEnabledFor(logging.INFO):
            access.info("%s %s %d %.1fms user=%s rid=%s", *ARGS, extra={"fields": FIELDS})
        if _ % 256 == 0:
            await asyncio.sleep(0)                  # let the flush timer run, as the server's loop would
    if access.writer is not None:
        access.writer.close()
    for handler in logging.getLogger().handlers:
        handler.flush()
    return (time.process_time() - started) / count


async def call_site(out: TextIO, count: int, rounds: int) -> None:
    """``boundary._log_access`` as a request calls it (metrics included), log off / stdlib / AccessWriter (text)."""
    from aiohttp.test_utils import make_mocked_request

    from proxy import boundary
    from proxy.context import REQUEST_ID
    from proxy.logs import ACCESS_LOG
    from proxy.metrics import Metrics

    metrics, request = Metrics(), make_mocked_request("GET", "/tiny")
    request[REQUEST_ID] = ARGS[5]
    root = logging.getLogger()

    def per_call() -> float:
        started = time.process_time()
        for _ in range(count):
            boundary._log_access(request, 200, 0.0004, metrics)
        if ACCESS_LOG.writer is not None:
            ACCESS_LOG.stop_writer()
        return (time.process_time() - started) / count

    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        root.handlers[:], ACCESS_LOG.writer = [], None
        root.setLevel(logging.WARNING)
        results.setdefault("log off (level warning)", []).append(per_call())
        handler = logging.StreamHandler(out)
        handler.setFormatter(TextFormatter())
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        results.setdefault("stdlib logging", []).append(per_call())
        ACCESS_LOG.writer = AccessWriter("text", out.fileno())
        results.setdefault("AccessWriter", []).append(per_call())
    root.handlers[:] = []
    print(f"\nboundary._log_access, text: µs CPU per call (median of {rounds} rounds of {count:,})")
    for name, values in results.items():
        print(f"{name:<24} {statistics.median(values) * 1e6:>6.1f}   [{' '.join(f'{v * 1e6:.1f}' for v in values)}]")


async def main(args: argparse.Namespace) -> None:
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
    asyncio.run(main(parser.parse_args()))
