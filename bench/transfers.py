"""Benchmark: a 1 GiB download and a 1 GiB upload through authproxy, against the same transfer direct.

A third case, nginx as a plain streaming reverse proxy in front of the same servers, shows what the extra
hop costs a proxy written in C on the same machine: the ceiling for any proxy.

The download comes from nginx (a sparse 1 GiB file: no disk, real bytes on the wire), the upload goes to
an aiohttp sink that counts bytes (sink.py); the client is curl, so the client costs little and the same
in both cases. Each round runs direct and proxied in turn (the order alternating), and the ratio
proxied/direct is computed per round; the median is reported, with authproxy's peak resident memory —
which must stay flat: bodies stream, they are never held whole.

    python bench/transfers.py [--rounds 3] [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OUT, is_authproxy_cookie  # noqa: E402
from stack import (source_version, Stack, clients_for, cpu_seconds, free_port, group_pids, login, peak_rss_kib,  # noqa: E402
                   run_bounded, wait_port)

HERE = Path(__file__).resolve().parent
CURL = shutil.which("curl") or "/usr/bin/curl"
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


def _children_cpu() -> float:
    """User + system CPU seconds of this script's finished children (each curl, once it exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def main(args: argparse.Namespace) -> int:
    size = args.size_mib << 20
    problems: list[str] = []
    results: dict[str, list[float]] = {f"{way} {name}": [] for way in ("down", "up")
                                       for name in ("direct", "authproxy", "nginx-proxy")}
    async with Stack(keep=args.keep) as stack:
        nginx, nginx_url = await stack.nginx({"big.bin": size})
        upload_file = stack.root / "upload.bin"
        with open(upload_file, "wb") as fh:
            fh.truncate(size)
        sink_port = free_port()
        sink = await stack.spawn("sink", [sys.executable, str(HERE / "sink.py"), "--port", str(sink_port)])
        await wait_port(sink_port, sink, "sink")
        sink_url = f"http://127.0.0.1:{sink_port}"
        authproxy_port = free_port()
        idp = await stack.idp(clients=clients_for(authproxy_port, free_port()))
        proxy, proxy_url = await stack.authproxy(authproxy_port, idp.issuer, nginx_url,
                                                 source=Path(args.authproxy_src).resolve(),
                                                 extra_upstreams=[{"path": "/upload", "url": sink_url}])
        cookie = await login(proxy_url + "/tiny", is_authproxy_cookie)
        reference, reference_url = await stack.nginx_proxy({"/upload": sink_url, "/": nginx_url})
        rss_start = peak_rss_kib(proxy.pid)
        # Warm-up, not measured: nginx and the page cache; the sink and the upload file (the first
        # upload of a run is several times slower, whichever way it goes).
        await curl(nginx_url + "/big.bin", cookie=None)
        await curl(sink_url + "/upload", cookie=None, upload=upload_file)
        cpu = {"down": 0.0, "up": 0.0}
        # CPU seconds of each party per transfer, both cases: where the machine's two cores went.
        parties: dict[str, list[float]] = {}
        cases = [("direct", nginx_url, sink_url), ("authproxy", proxy_url, proxy_url),
                 ("nginx-proxy", reference_url, reference_url)]
        for round_ in range(args.rounds):
            order = cases[round_ % 3:] + cases[:round_ % 3]     # each case first in turn
            for way in args.ways:
                for name, down_base, up_base in order:
                    before = cpu_seconds(group_pids(proxy.pid))
                    reference_before = cpu_seconds(group_pids(reference.pid))
                    server_pids = group_pids(nginx.pid) if way == "down" else group_pids(sink.pid)
                    server_before, client_before = cpu_seconds(server_pids), _children_cpu()
                    if way == "down":
                        status, moved, seconds, _ = await curl(down_base + "/big.bin", cookie=cookie)
                        ok = status == 200 and moved == size
                    else:
                        status, moved, seconds, body = await curl(up_base + "/upload", cookie=cookie,
                                                                  upload=upload_file)
                        ok = status == 200 and moved == size and body.strip() == str(size)
                    proxy_cpu = cpu_seconds(group_pids(proxy.pid)) - before
                    if name == "authproxy":
                        cpu[way] += proxy_cpu
                        parties.setdefault(f"{way} authproxy: authproxy", []).append(proxy_cpu)
                    if name == "nginx-proxy":
                        parties.setdefault(f"{way} nginx-proxy: nginx-proxy", []).append(
                            cpu_seconds(group_pids(reference.pid)) - reference_before)
                    server = "nginx" if way == "down" else "sink"
                    parties.setdefault(f"{way} {name}: {server}", []).append(cpu_seconds(server_pids) - server_before)
                    parties.setdefault(f"{way} {name}: curl", []).append(_children_cpu() - client_before)
                    parties.setdefault(f"{way} {name}: wall", []).append(seconds)
                    if not ok:
                        problems.append(f"round {round_ + 1} {way} {name}: HTTP {status}, {moved} of {size} bytes")
                    results[f"{way} {name}"].append(size / seconds / 1e6)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        rss_peak = peak_rss_kib(proxy.pid)
    print(f"\nauthproxy {source_version(Path(args.authproxy_src))}; {args.size_mib} MiB each way, curl as the client, "
          f"{args.rounds} rounds")
    print(f"{'transfer':<10} {'direct':>8} {'authproxy':>10} {'nginx-proxy':>12}   "
          f"{'authproxy/direct [each round]':<34} {'nginx-proxy/direct':<20} {'authproxy/nginx-proxy':<22} "
          f"{'authproxy CPU s/GiB':>19}")
    rows = []
    for way, label in (("down", "download"), ("up", "upload")):
        if way not in args.ways:
            continue
        direct, proxied, reference = (results[f"{way} {name}"] for name in ("direct", "authproxy", "nginx-proxy"))
        ratios = [p / d for p, d in zip(proxied, direct)]
        reference_ratios = [r / d for r, d in zip(reference, direct)]
        versus_reference = [p / r for p, r in zip(proxied, reference)]
        cpu_per_gib = cpu[way] / args.rounds / (size / (1 << 30))
        rows.append({"transfer": label, "direct_mb_s": statistics.median(direct),
                     "authproxy_mb_s": statistics.median(proxied), "nginx_proxy_mb_s": statistics.median(reference),
                     "ratio": statistics.median(ratios), "ratios": ratios,
                     "nginx_proxy_ratios": reference_ratios, "authproxy_to_nginx_proxy": versus_reference,
                     "direct_rounds": direct, "authproxy_rounds": proxied, "nginx_proxy_rounds": reference,
                     "authproxy_cpu_s_per_gib": cpu_per_gib})
        each = " ".join(f"{r:.2f}" for r in ratios)
        print(f"{label:<10} {statistics.median(direct):>8.0f} {statistics.median(proxied):>10.0f} "
              f"{statistics.median(reference):>12.0f}   {statistics.median(ratios):.2f} [{each}]"
              f"{'':<{max(0, 27 - len(each))}} {statistics.median(reference_ratios):<20.2f} "
              f"{statistics.median(versus_reference):<22.2f} {cpu_per_gib:>19.2f}")
    print("(MB/s: medians over rounds; ratios: medians of per-round ratios)")
    print("\nCPU seconds per transfer (median), and the wall-clock seconds it took:")
    for key, values in parties.items():
        print(f"  {key:<32} {statistics.median(values):6.2f}")
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each transfer (default 1024 MiB)")
    parser.add_argument("--only", choices=("down", "up"), help="run only the download or only the upload")
    parser.add_argument("--authproxy-src", default=str(HERE.parent), metavar="DIR",
                        help="the checkout whose proxy/ package runs (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    arguments = parser.parse_args()
    arguments.ways = (arguments.only,) if arguments.only else ("down", "up")
    sys.exit(run_bounded(lambda: main(arguments), arguments.rounds * 6 * (MAX_TIME + 10) + 120))
