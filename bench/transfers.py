"""Benchmark: a 1 GiB download and a 1 GiB upload through authproxy, against the same transfer direct.

More cases show what the extra hop itself costs on the same machine: a layer-4 relay that does nothing
but splice(2) bytes (splice_relay.py, the floor for any user-space proxy), nginx as a plain streaming
reverse proxy (user-space buffers), and HAProxy with ``option splice-auto`` (splice(2), as authproxy)
when it is installed. And, unless ``--no-unix``, authproxy and the relay with the servers reached over
unix sockets instead of loopback TCP, as a sidecar can reach its app through a shared volume.

The download comes from nginx (a sparse 1 GiB file: no disk, real bytes on the wire), the upload goes to
an aiohttp sink that counts bytes (sink.py); the client is curl, so the client costs little and the same
in both cases. Each round runs direct and proxied in turn (the order alternating), and the ratio
proxied/direct is computed per round; the median is reported, with authproxy's peak resident memory —
which must stay flat: bodies stream, they are never held whole.

    python bench/transfers.py [--rounds 3] [--size-mib 1024] [--only down|up] [--no-unix]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OUT, is_authproxy_cookie
from stack import (HAPROXY, Proc, source_version, Stack, clients_for, cpu_seconds, free_port, group_pids,
                   login, peak_rss_kib, run_bounded, wait_port)

HERE = Path(__file__).resolve().parent
CURL = shutil.which("curl") or "/usr/bin/curl"
# authproxy against each other way over the same hop: the bare splice relay (the floor), the C proxies.
PAIRS = [("authproxy", "splice-relay"), ("authproxy", "nginx-proxy"), ("authproxy", "haproxy"),
         ("authproxy-unix", "relay-unix")]
# Seconds one transfer may take before curl gives up (≈ 10 MB/s for 1 GiB: something is badly wrong).
MAX_TIME = 120


async def curl(url: str, *, cookie: str | None, upload: Path | None = None) -> tuple[int, int, float, str]:
    """(HTTP status, bytes moved, seconds, response body) of one transfer."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"only 127.0.0.1, not {url}")
    argv = [CURL, "-sS", "--max-time", str(MAX_TIME), "-w", "\n%{http_code} %{size_download} %{size_upload} "
            "%{time_total}", "-H", "Accept: application/octet-stream"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    if upload is not None:
        argv += ["-X", "POST", "-T", str(upload), "-H", "Expect:", "-H", "Content-Type: application/octet-stream"]
    else:
        argv += ["-o", "/dev/null"]
    proc = await asyncio.create_subprocess_exec(*argv, url, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), MAX_TIME + 10)
    body, _, summary = out.decode().rpartition("\n")
    status, down, up, seconds = summary.split()
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({proc.returncode}): {err.decode()}")
    return int(status), int(float(up if upload else down)), float(seconds), body


async def relay_case(stack: Stack, down: str, up: str) -> tuple[Proc, str, str]:
    """A splice relay (splice_relay.py) with one port to ``down`` and one to ``up`` (``host:port`` or
    ``unix:/path``), as a case: (process, download base URL, upload base URL)."""
    down_port, up_port = free_port(), free_port()
    proc = await stack.splice_relay({down_port: down, up_port: up})
    return proc, f"http://127.0.0.1:{down_port}", f"http://127.0.0.1:{up_port}"


def _children_cpu() -> float:
    """User + system CPU seconds of this script's finished children (each curl, once it exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def main(args: argparse.Namespace) -> int:
    size = args.size_mib << 20
    problems: list[str] = []
    async with Stack(keep=args.keep) as stack:
        nginx, nginx_url = await stack.nginx({"big.bin": size})
        upload_file = stack.root / "upload.bin"
        with open(upload_file, "wb") as fh:
            fh.truncate(size)
        sink_port = free_port()
        sink_socket = stack.root / "sink.sock"
        sink = await stack.spawn("sink", [sys.executable, str(HERE / "sink.py"), "--port", str(sink_port),
                                          "--unix", str(sink_socket)])
        await wait_port(sink_port, sink, "sink")
        sink_url = f"http://127.0.0.1:{sink_port}"
        authproxy_port = free_port()
        idp = await stack.idp(clients=clients_for(authproxy_port, free_port()))
        # One cookie secret for both authproxy instances: the session signed in on the first opens on the second.
        cookie_config = {"secret": base64.urlsafe_b64encode(os.urandom(32)).decode(), "secure": False}
        source = Path(args.authproxy_src).resolve()
        proxy, proxy_url = await stack.authproxy(authproxy_port, idp.issuer, nginx_url, source=source,
                                                 extra_upstreams=[{"path": "/upload", "url": sink_url}],
                                                 cookie=cookie_config)
        cookie = await login(proxy_url + "/tiny", is_authproxy_cookie)
        routes = {"/upload": sink_url, "/": nginx_url}
        # name -> (process or None, download base URL, upload base URL); the proxies in the middle.
        cases: dict[str, tuple[Proc | None, str, str]] = {"direct": (None, nginx_url, sink_url),
                                                         "authproxy": (proxy, proxy_url, proxy_url)}
        # The floor for any proxy: a relay that only splices bytes (splice_relay.py), one port per direction.
        cases["splice-relay"] = await relay_case(stack, nginx_url.removeprefix("http://"),
                                                 sink_url.removeprefix("http://"))
        if args.unix:
            # The app on a unix socket beside the sidecar (a shared volume): the hop costs no second TCP
            # connection. Direct stays curl over TCP to the same servers.
            unix_port = free_port()
            unix_proxy, unix_url = await stack.authproxy(
                unix_port, idp.issuer, f"unix:{stack.nginx_socket()}", source=source, cookie=cookie_config,
                extra_upstreams=[{"path": "/upload", "url": f"unix:{sink_socket}"}])
            cases["authproxy-unix"] = (unix_proxy, unix_url, unix_url)
            cases["relay-unix"] = await relay_case(stack, f"unix:{stack.nginx_socket()}", f"unix:{sink_socket}")
        reference, reference_url = await stack.nginx_proxy(routes)
        cases["nginx-proxy"] = (reference, reference_url, reference_url)
        if os.access(HAPROXY, os.X_OK):
            splicer, splicer_url = await stack.haproxy(routes)
            cases["haproxy"] = (splicer, splicer_url, splicer_url)
        else:
            print(f"(no {HAPROXY}: the HAProxy reference is left out; bash bench/setup installs it)")
        results: dict[str, list[float]] = {f"{way} {name}": [] for way in ("down", "up") for name in cases}
        # CPU seconds of each party per transfer: where the machine's two cores went.
        parties: dict[str, list[float]] = {}
        rss_start = peak_rss_kib(proxy.pid)
        # Warm-up, not measured: nginx and the page cache; the sink and the upload file (the first
        # upload of a run is several times slower, whichever way it goes).
        await curl(nginx_url + "/big.bin", cookie=None)
        await curl(sink_url + "/upload", cookie=None, upload=upload_file)
        names = list(cases)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for way in args.ways:
                for name in names[shift:] + names[:shift]:               # each case first in turn
                    middle, down_base, up_base = cases[name]
                    server = (nginx if way == "down" else sink)
                    watched = {"curl": None, server.name: server, **({name: middle} if middle else {})}
                    before = {party: _cpu(proc) for party, proc in watched.items()}
                    if way == "down":
                        status, moved, seconds, _ = await curl(down_base + "/big.bin", cookie=cookie)
                        ok = status == 200 and moved == size
                    else:
                        status, moved, seconds, body = await curl(up_base + "/upload", cookie=cookie,
                                                                  upload=upload_file)
                        ok = status == 200 and moved == size and body.strip() == str(size)
                    for party, proc in watched.items():
                        parties.setdefault(f"{way} {name}: {party}", []).append(_cpu(proc) - before[party])
                    parties.setdefault(f"{way} {name}: wall", []).append(seconds)
                    if not ok:
                        problems.append(f"round {round_ + 1} {way} {name}: HTTP {status}, {moved} of {size} bytes")
                    results[f"{way} {name}"].append(size / seconds / 1e6)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        rss_peak = peak_rss_kib(proxy.pid)
    rows = report(args, names, results, parties, size)
    print(f"\nauthproxy peak RSS (VmHWM): {rss_peak / 1024:.1f} MiB (after login, before the transfers: "
          f"{rss_start / 1024:.1f} MiB)")
    if problems:
        print("\n!!! PROBLEMS:\n" + "\n".join(f"!!!   {p}" for p in problems))
    OUT.mkdir(exist_ok=True)
    (OUT / "transfers.json").write_text(json.dumps({"args": vars(args), "rows": rows, "peak_rss_kib": rss_peak,
                                                    "rss_before_kib": rss_start, "cpu_seconds": parties,
                                                    "problems": problems}, indent=1))
    print(f"all figures: {OUT / 'transfers.json'}")
    return 1 if problems else 0


def _cpu(proc: Proc | None) -> float:
    """CPU seconds so far of a process and its group (nginx's workers), or of the finished curls."""
    return _children_cpu() if proc is None else cpu_seconds(group_pids(proc.pid))


def report(args: argparse.Namespace, names: list[str], results: dict[str, list[float]],
           parties: dict[str, list[float]], size: int) -> list[dict[str, object]]:
    """Print, per direction, each case's MB/s, its ratio to direct (median of per-round ratios, each
    round in brackets) and its own CPU per GiB; then authproxy against each other proxy."""
    print(f"\nauthproxy {source_version(Path(args.authproxy_src))}; {args.size_mib} MiB each way, curl as the "
          f"client, {args.rounds} rounds; MB/s are medians over rounds, ratios medians of per-round ratios")
    print(f"{'transfer':<10} {'case':<14} {'MB/s':>6}   {'/ direct [each round]':<58} {'its CPU s/GiB':>13}")
    rows: list[dict[str, object]] = []
    gib = size / (1 << 30)
    for way, label in (("down", "download"), ("up", "upload")):
        if way not in args.ways:
            continue
        direct = results[f"{way} direct"]
        for name in names:
            rates = results[f"{way} {name}"]
            ratios = [r / d for r, d in zip(rates, direct, strict=False)]
            own = parties.get(f"{way} {name}: {name}")
            cpu = statistics.median(own) / gib if own else None
            each = " ".join(f"{r:.2f}" for r in ratios)
            print(f"{label if name == 'direct' else '':<10} {name:<14} {statistics.median(rates):>6.0f}   "
                  + (f"{statistics.median(ratios):.2f} [{each}]" if name != "direct" else "").ljust(58)
                  + (f" {cpu:>13.2f}" if cpu is not None else ""))
            rows.append({"transfer": label, "case": name, "mb_s": statistics.median(rates), "rounds": rates,
                         "ratio_to_direct": statistics.median(ratios), "ratios": ratios, "cpu_s_per_gib": cpu})
        for mine, other in PAIRS:
            if mine in names and other in names:
                versus = [a / o for a, o in zip(results[f"{way} {mine}"], results[f"{way} {other}"], strict=False)]
                print(f"{'':<10} {mine} / {other}: {statistics.median(versus):.2f} "
                      f"[{' '.join(f'{v:.2f}' for v in versus)}]")
    print("\nCPU seconds per transfer (median) of each party, and the wall-clock seconds it took:")
    for key, values in parties.items():
        print(f"  {key:<36} {statistics.median(values):6.2f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each transfer (default 1024 MiB)")
    parser.add_argument("--only", choices=("down", "up"), help="run only the download or only the upload")
    parser.add_argument("--authproxy-src", default=str(HERE.parent), metavar="DIR",
                        help="the checkout whose proxy/ package runs (default: this one)")
    parser.add_argument("--no-unix", dest="unix", action="store_false",
                        help="leave out the cases with the servers on unix sockets (authproxy-unix, relay-unix)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    arguments = parser.parse_args()
    arguments.ways = (arguments.only,) if arguments.only else ("down", "up")
    sys.exit(run_bounded(lambda: main(arguments), arguments.rounds * 8 * (MAX_TIME + 10) + 120))
