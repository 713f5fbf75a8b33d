"""Run ``python -m proxy`` with tracemalloc on, writing a snapshot of the Python heap on SIGUSR1.

Used by ``bench/idle.py --trace``: snapshots before and while connections are held, diffed by
allocation site, show where the bytes of an idle connection go. Tracing starts at the first snapshot
(start-up under it took 30 s); only Python's allocator is traced: what C code allocates with malloc
(uvloop's buffers, the kernel's socket buffers are not even in RSS) is not.

    python bench/traced.py --config FILE        # then: kill -USR1 PID → <TRACE_DIR>/snapshot-N.pickle
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

# Frames kept per allocation: enough to tell aiohttp's parser from our handler from asyncio's tasks.
FRAMES = 12


def _dump(signum: int, frame: FrameType | None) -> None:
    if not tracemalloc.is_tracing():        # tracing from the first snapshot on: start-up under it takes 30 s
        tracemalloc.start(FRAMES)
    directory = Path(os.environ.get("TRACE_DIR", "."))
    count = len(list(directory.glob("snapshot-*.pickle")))
    tracemalloc.take_snapshot().dump(str(directory / f"snapshot-{count}.pickle"))


def main() -> None:
    signal.signal(signal.SIGUSR1, _dump)
    sys.argv[0] = "authproxy"
    runpy.run_module("proxy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
