"""Profiling authproxy with py-spy while wrk loads it, and summing the samples into hot spots.

``py-spy record --pid`` samples the running proxy from outside (no code change, no restart). Its ``raw``
format is one collapsed stack per line (``frame;frame;frame COUNT``, the format of flamegraph.pl and
speedscope.app); ``hot_spots`` reads it back: self time (the frame at the top of the stack) and total
time (the frame anywhere in the stack) per function, as shares of all samples.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from pathlib import Path

PY_SPY = shutil.which("py-spy")
# Samples per second: py-spy's default; the proxy is paused briefly at each one.
RATE = 100
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


async def record(pid: int, duration: float, output: Path) -> asyncio.subprocess.Process:
    """Start ``py-spy record`` on ``pid`` for ``duration`` seconds; await ``.wait()`` on the result."""
    if PY_SPY is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy (bench/setup does)")
    output.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(output.suffix, "raw")
    return await asyncio.create_subprocess_exec(
        PY_SPY, "record", "--pid", str(pid), "--subprocesses", "--duration", str(max(1, round(duration))),
        "--rate", str(RATE),
        "--format", fmt, "--output", str(output), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


def _name(frame: str) -> str:
    """``handle (proxy/gate.py:120)`` → ``handle (proxy/gate.py)``: one row per function, not per line."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/proxy/" in path:                      # authproxy's package, in whichever checkout it ran from
        path = "proxy/" + path.split("/proxy/", 1)[1]
    return f"{match['func']} ({path})"


def hot_spots(collapsed: Path, top: int = 10) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]],
                                                      list[tuple[str, float]]]:
    """From py-spy's raw output: (samples, self time by function, self time by file, total time of
    authproxy's own functions), each a list of (name, share of samples)."""
    self_counts: Counter[str] = Counter()
    file_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ") and not
                  f.startswith("thread ")]
        if not frames:
            continue
        self_counts[frames[-1]] += n
        file_counts[frames[-1].rpartition(" (")[2].rstrip(")")] += n
        for name in set(frames):
            total_counts[name] += n
    if not samples:
        return 0, [], [], []
    self_top = [(name, n / samples) for name, n in self_counts.most_common(top)]
    files = [(name, n / samples) for name, n in file_counts.most_common(top)]
    # Total time is most telling for the proxy's own functions; leave out the wrappers in every stack.
    own = [(name, n / samples) for name, n in total_counts.most_common()
           if "(proxy/" in name and n < 0.98 * samples][:top]
    return samples, self_top, files, own
