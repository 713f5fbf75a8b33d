"""Running wrk (Debian's ``wrk`` package) and reading its results as JSON.

wrk prints a human summary; the Lua scripts next to this file add one line ``BENCH_JSON {...}`` from
``done()`` with what the benchmarks need: requests, bytes, errors, latency percentiles (µs). Two scripts:

- ``wrk_report.lua`` only reports. wrk passes nothing to Lua per response, so it measures the server,
  not the script; it cannot see 3xx answers, though (wrk counts only ≥ 400 as status errors), so the
  caller also checks the bytes per response and probes the session after the run.
- ``wrk_count.lua`` also counts every response by status code (a ``response()`` callback). That costs wrk
  a copy of every body into Lua — a third of nginx's throughput for 100 KB bodies — so it is used where
  exact counts matter more than speed: warm-ups and the refresh storm.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRK = shutil.which("wrk") or "/usr/bin/wrk"
HERE = Path(__file__).resolve().parent
REPORT_SCRIPT = HERE / "wrk_report.lua"
COUNT_SCRIPT = HERE / "wrk_count.lua"
# Seconds a wrk run may overrun its duration before it is killed (its own timeouts are 5 s).
GRACE = 15.0
# wrk's per-request timeout: a slow answer is a latency to measure, not an error.
REQUEST_TIMEOUT = "5s"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    statuses: dict[int, int] = field(default_factory=dict)   # only with COUNT_SCRIPT
    raw: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def bytes_per_response(self) -> float:
        return self.bytes / self.requests if self.requests else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def non_2xx(self) -> int | None:
        """Answers outside 200–299: exact with COUNT_SCRIPT, else None (see ``errors["status"]`` for ≥ 400)."""
        if not self.statuses:
            return None
        return sum(n for status, n in self.statuses.items() if not 200 <= status <= 299)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "duration_s": self.duration_s, "rps": round(self.rps, 1),
                "bytes": self.bytes, "errors": self.errors, "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
                "p99_ms": self.p99_ms, "mean_ms": self.mean_ms, "max_ms": self.max_ms,
                "statuses": {str(k): v for k, v in self.statuses.items()}}


async def run_wrk(url: str, *, connections: int, duration: float, cookie: str | None = None,
                  count_statuses: bool = False, threads: int | None = None) -> WrkResult:
    """One wrk run against ``url`` (loopback only), bounded by ``duration`` + GRACE seconds."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only send traffic to 127.0.0.1, not {url}")
    threads = threads or min(connections, 2)
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", REQUEST_TIMEOUT, "-s", str(COUNT_SCRIPT if count_statuses else REPORT_SCRIPT)]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    argv.append(url)
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), duration + GRACE)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(argv[:-2])} …\n{text}\n{err.decode()}")
    data = json.loads(line[len("BENCH_JSON "):])
    return WrkResult(
        requests=data["requests"], duration_s=data["duration_us"] / 1e6, bytes=data["bytes"],
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout")},
        p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000, max_ms=data["max_us"] / 1000,
        statuses={int(k): v for k, v in (data.get("statuses") or {}).items()}, raw=text)
