#!/usr/bin/env python3
"""Logins per second and CPU per login: authproxy against Apache httpd + mod_auth_openidc (issue 15).

Both relying parties sit in front of the same nginx and sign users in at the same oidc-provider (tests/idp)
with the same flow: authorization code with PKCE, ``prompt=consent``, the same scopes, the ID token checked
against the provider's keys. Each "user" is a fresh cookie jar that requests a protected URL, follows the
redirect to the provider, answers its login and consent forms, and comes back through the callback (the
code exchange and the ID-token check happen there) to the upstream's 200 — ``tests/support/browserless``,
the same client for both.

Measured per relying party, in rounds that alternate between them: completed logins per second with
``--users`` concurrent users for ``--duration`` seconds, and the relying party's own CPU time (all its
processes) per completed login. The provider, a single node process, does most of the work of a login and
bounds the rate for both; the CPU per login is the figure that compares the relying parties. The ratios are
authproxy / Apache, from the same run.

    python bench/logins.py [--users 8] [--duration 10] [--rounds 3] [--workers 1]

Everything listens on 127.0.0.1; each run stops by itself and ``run_bounded`` stops everything at a hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from stack import (Stack, clients_for, cpu_seconds, group_pids, run_bounded,  # noqa: E402
                   source_version)

from tests.support.browserless import login_via_http  # noqa: E402
from tests.support.ports import free_port  # noqa: E402


async def drive(url: str, users: int, duration: float) -> tuple[int, int]:
    """Logins completed and failed by ``users`` concurrent users within ``duration`` seconds."""
    done = failed = 0
    end = time.monotonic() + duration

    async def user() -> None:
        nonlocal done, failed
        while time.monotonic() < end:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as jar:
                try:
                    result = await login_via_http(jar, url + "/tiny")
                    ok = result.status == 200
                except (aiohttp.ClientError, TimeoutError, RuntimeError):
                    ok = False
            if time.monotonic() <= end:
                done, failed = (done + 1, failed) if ok else (done, failed + 1)

    await asyncio.gather(*(user() for _ in range(users)))
    return done, failed


async def main(args: argparse.Namespace) -> int:
    async with Stack() as stack:
        _, nginx_url = await stack.nginx({})
        authproxy_port, apache_port = free_port(), free_port()
        idp = await stack.idp(clients=clients_for(authproxy_port, apache_port))
        authproxy, authproxy_url = await stack.authproxy(authproxy_port, idp.issuer, nginx_url,
                                                         workers=args.workers)
        apache, apache_url = await stack.apache(apache_port, idp.issuer, nginx_url)
        idp_pid = idp._proc.pid if idp._proc is not None else None
        rows: dict[str, list[tuple[float, float, float, int]]] = {"authproxy": [], "apache": []}
        for url in (authproxy_url, apache_url):                                         # warm-up
            await drive(url, 2, 1.0)
        for round_ in range(args.rounds):
            for name, proc, url in (("authproxy", authproxy, authproxy_url), ("apache", apache, apache_url)):
                pids = group_pids(proc.pid)
                cpu0 = cpu_seconds(pids)
                idp0 = cpu_seconds([idp_pid]) if idp_pid else 0.0
                started = time.monotonic()
                done, failed = await drive(url, args.users, args.duration)
                wall = time.monotonic() - started
                cpu = cpu_seconds(group_pids(proc.pid)) - cpu0
                idp_cpu = (cpu_seconds([idp_pid]) - idp0) if idp_pid else 0.0
                rows[name].append((done / wall, cpu / max(done, 1) * 1000, idp_cpu / max(done, 1) * 1000, failed))
                print(f"round {round_ + 1} {name:9}: {done} logins in {wall:.1f}s = {done / wall:.1f}/s, "
                      f"RP CPU {cpu / max(done, 1) * 1000:.2f} ms/login, provider CPU "
                      f"{idp_cpu / max(done, 1) * 1000:.2f} ms/login, failed {failed}", flush=True)
        med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
                      statistics.median(r[2] for r in rs), sum(r[3] for r in rs)) for name, rs in rows.items()}
        print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {source_version()}, "
              f"{args.users} users, {args.duration:.0f}s x {args.rounds} rounds, authproxy workers: {args.workers}")
        print("| | logins/s | RP CPU per login | provider CPU per login | failed |")
        print("|---|---|---|---|---|")
        for name, (rate, cpu, idp_cpu, failed) in med.items():
            print(f"| {name} | {rate:.1f} | {cpu:.2f} ms | {idp_cpu:.2f} ms | {failed} |")
        a, b = med["authproxy"], med["apache"]
        print(f"| authproxy / Apache | **{a[0] / b[0]:.2f}×** | **{a[1] / b[1]:.2f}×** | | |")
        if args.profile:
            await profile(authproxy.pid, authproxy_url, args)
        return 0 if a[3] == 0 and b[3] == 0 else 1


async def profile(pid: int, url: str, args: argparse.Namespace) -> None:
    """One more authproxy run (not in the table) with py-spy sampling it: where a login's CPU goes."""
    import pyspy
    output = Path(args.profile)
    spy = await pyspy.record(pid, args.duration, output)
    await asyncio.sleep(0.3)
    await drive(url, args.users, args.duration)
    await asyncio.wait_for(spy.communicate(), 30)
    samples, self_top, files, own = pyspy.hot_spots(output, top=15)
    print(f"\nprofile of authproxy during logins: {samples} samples, written to {output}")
    for title, rows in (("self time by function", self_top), ("self time by file", files),
                        ("total time of authproxy's functions", own)):
        print(title + ":")
        for name, share in rows:
            print(f"  {share:6.1%}  {name}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8, help="concurrent users signing in")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default=1, help="authproxy's workers setting (1, N or auto)")
    parser.add_argument("--profile", metavar="FILE", help="also profile authproxy with py-spy in one more run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.workers != "auto":
        arguments.workers = int(arguments.workers)
    limit = 120 + 2 * arguments.rounds * (arguments.duration + 5) * 2
    sys.exit(run_bounded(lambda: main(arguments), limit))
