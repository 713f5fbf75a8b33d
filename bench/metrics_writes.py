"""What a request's metric writes cost, in one process and in a worker of ``workers: N``.

    python bench/metrics_writes.py [--repeat 5] [--number 200000]

Times ``Metrics.answered`` plus ``Metrics.upstream_answered`` (a proxied request's five value writes: a
counter, and a histogram's sum and bucket twice) with timeit, best of ``--repeat``, in a fresh
interpreter per mode, since prometheus-client's value class is a process-wide choice:

- ``one process``: the library's in-memory values (``workers: 1``);
- ``worker``: ``metrics.worker_value_class``, memory-mapped files summed by ``/metrics`` (``workers: N``);
- ``library multiprocess``: prometheus-client's own ``MultiProcessValue`` (a lock and a getpid per write),
  for comparison.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys, tempfile, timeit
from prometheus_client import values
from proxy.metrics import MULTIPROC_ENV, Metrics, worker_value_class
mode, number, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shared = None
if mode != "one process":
    shared = tempfile.mkdtemp(prefix="authproxy-bench-metrics-")
    os.environ[MULTIPROC_ENV] = shared
    values.ValueClass = (worker_value_class(shared, os.getpid()) if mode == "worker"
                         else values.MultiProcessValue())
metrics = Metrics(shared)
def request():
    metrics.answered("/", 200, 0.0003)
    metrics.upstream_answered("/", 0.0002)
request()
print(min(timeit.repeat(request, number=number, repeat=repeat)) / number * 1e6)
if shared:
    import shutil
    shutil.rmtree(shared)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    for mode in ("one process", "worker", "library multiprocess"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.number), str(args.repeat)], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
        print(f"{mode:<22} {float(out):6.2f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
