"""Benchmark: instructions per proxied tiny GET, counted by callgrind — a figure the machine's load does not move.

Wall-clock CPU per request (``run.py``) scatters by 10–20 % between runs on a shared 2-core machine, and a
sampling profiler (py-spy) charges a process preempted inside ``write()`` to that call, so on a busy machine
the socket calls look like half of a request when ``/proc``'s user/system split says a third. Counting
instructions under ``valgrind --tool=callgrind`` settles small before/after questions instead:

1. nginx (``/tiny``), oidc-provider and authproxy start as in ``run.py``; a browser-less login gives a cookie;
2. authproxy is restarted under callgrind with instrumentation off (start-up is not counted);
3. for N1 and then N2 requests (8 keep-alive connections, each sending its next request when it has the
   answer), counting is switched on, zeroed, and dumped after; (I2 − I1) / (N2 − N1) is the figure.

It counts user-space instructions of the proxy's process (all its threads: the access-log writer too), not
the kernel's work for its system calls. Each ``--src`` is measured in turn with the same provider and nginx.

    python bench/callgrind.py                              # this checkout
    python bench/callgrind.py --src /tmp/before --src .    # before/after: git archive C proxy | tar -x -C /tmp/before
    python bench/callgrind.py --set limits.express=false --set logging.level=info --path /100k.bin

About a minute per source (callgrind runs the proxy ~50× slower).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import is_authproxy_cookie
from stack import Stack, clients_for, free_port, login, run_bounded, wait_port

CONNECTIONS = 8


async def load(port: int, cookie: str, count: int, path: str = "/tiny") -> None:
    """``count`` GETs of ``path`` over CONNECTIONS keep-alive connections, each waiting for its answer."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nAccept: */*\r\n\r\n").encode()

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"not a 200: {head[:200]!r}")
            length = re.search(rb"content-length: *(\d+)", head, re.I)
            await reader.readexactly(int(length.group(1)) if length else 0)
        writer.close()
    await asyncio.gather(*(one(count // CONNECTIONS) for _ in range(CONNECTIONS)))


def totals(path: str) -> int:
    with open(path) as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


async def measure(stack: Stack, issuer: str, upstream: str, src: Path, port: int, settings: dict[str, Any],
                  counts: tuple[int, int], path: str) -> float:
    proc, url = await stack.authproxy(port, issuer, upstream, source=src, **settings)
    cookie = await login(url + "/tiny", is_authproxy_cookie)
    await stack.stop(proc)
    config = stack.root / f"authproxy-{port}.yaml"
    prefix = stack.root / f"callgrind-out-{port}"
    traced = await stack.spawn(f"callgrind-{port}", [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={prefix}.%p",
        sys.executable, "-m", "proxy", "--config", str(config)],
        cwd=src, env={**os.environ, "PYTHONPATH": str(src)})
    await wait_port(port, traced, "authproxy under callgrind", timeout=300)
    await load(port, cookie, 200, path)                   # warm: caches, pooled connections
    counted = []
    for count in counts:
        control("-i", "on", str(traced.pid))
        control("-z", str(traced.pid))
        await load(port, cookie, count, path)
        control("-d", str(traced.pid))
        control("-i", "off", str(traced.pid))
        await asyncio.sleep(0.5)
        dumps = sorted(glob.glob(f"{prefix}.*"), key=os.path.getmtime)
        counted.append(totals(dumps[-1]))
    await stack.stop(traced)
    return (counted[1] - counted[0]) / (counts[1] - counts[0])


def setting(text: str) -> tuple[list[str], Any]:
    """``limits.express=false`` → (["limits", "express"], False)."""
    key, _, value = text.partition("=")
    parsed: Any = {"true": True, "false": False}.get(value.lower(), value)
    return key.split("."), parsed


async def main(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    for path, value in map(setting, args.set):
        node = settings
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    sources = [Path(s).resolve() for s in (args.src or ["."])]
    async with Stack() as stack:
        _, upstream = await stack.nginx({"100k.bin": 100 * 1024})
        ports = [free_port() for _ in sources]
        clients = clients_for(ports[0], free_port())
        clients[0]["redirect_uris"] = [f"http://127.0.0.1:{p}/oauth2/callback" for p in ports]
        idp = await stack.idp(clients=clients)
        figures = []
        for src, port in zip(sources, ports, strict=True):
            figure = await measure(stack, idp.issuer, upstream, src, port, settings,
                                   (args.requests, 3 * args.requests), args.path)
            figures.append(figure)
            print(f"{src}: {figure / 1000:.1f}k instructions per request", flush=True)
        if len(figures) > 1:
            print(f"last / first: {figures[-1] / figures[0]:.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", action="append", help="a checkout whose proxy/ runs (repeatable; default: .)")
    parser.add_argument("--requests", type=int, default=400, help="N1; N2 is three times it (default 400)")
    parser.add_argument("--path", default="/tiny", help="what to GET: /tiny (3 bytes) or /100k.bin (default /tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting for every authproxy, e.g. logging.level=info (repeatable)")
    sys.exit(run_bounded(lambda: main(parser.parse_args()), time_limit=900))
