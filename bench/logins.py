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
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from stack import (AUTHPROXY_CLIENT, APACHE_CLIENT, OIDC_SCOPES, Proc, Stack, clients_for,  # noqa: E402
                   cpu_seconds, group_pids, machine_busy_seconds, run_bounded, source_version)

from tests.support.browserless import login_via_http  # noqa: E402
from tests.support.idp import IdP  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

# What nginx's /tiny answers: the page a completed login must end on.
UPSTREAM_BODY = "ok\n"


@dataclass
class Target:
    """A relying party under test: its process group, its URL and the client it is at the provider."""

    name: str
    proc: Proc
    url: str
    client_id: str


@dataclass
class Sample:
    """One target's run in one round: counts, and CPU seconds of each party over the run."""

    logins: int
    failed: int
    wall: float
    grants: int             # authorization-code grants the provider made to this client during the run
    rp_cpu: float
    provider_cpu: float
    client_cpu: float       # this process: the users' HTTP and HTML parsing
    busy: float             # every CPU of the machine, busy seconds
    first_failure: str = ""

    @property
    def rate(self) -> float:
        return self.logins / self.wall

    def per_login_ms(self, seconds: float) -> float:
        return seconds / max(self.logins, 1) * 1000


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of a process group, including its leader's children that already exited and were reaped
    (an Apache child stopped for having too many spare threads takes its CPU time to its parent's
    cutime/cstime, which ``cpu_seconds`` alone would lose)."""
    try:
        fields = Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()
        reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")   # fields 16, 17: cutime, cstime
    except OSError:
        reaped = 0.0
    return cpu_seconds(group_pids(pgid)) + reaped


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def code_grants(idp: IdP, client_id: str) -> int:
    """Successful authorization-code grants (code exchanges at the token endpoint) made to ``client_id``."""
    return sum(1 for event in idp.events() if event.get("event") == "grant" and event.get("ok") is True
               and event.get("grant_type") == "authorization_code" and event.get("client_id") == client_id)


async def drive(url: str, users: int, duration: float) -> tuple[int, int, str]:
    """Logins completed and failed by ``users`` concurrent users who start logins for ``duration`` seconds,
    and the first failure. A login counts as completed when it ends on the upstream's own page at the relying
    party's URL; logins under way at the end are finished and counted (the caller's wall time and CPU times
    include them)."""
    done = failed = 0
    first_failure = ""
    end = time.monotonic() + duration
    port = urlsplit(url).port

    async def user() -> None:
        nonlocal done, failed, first_failure
        while time.monotonic() < end:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as jar:
                try:
                    result = await login_via_http(jar, url + "/tiny")
                    where = urlsplit(result.url)
                    ok = (result.status == 200 and result.body_text == UPSTREAM_BODY and where.port == port
                          and where.path == "/tiny")
                    problem = "" if ok else f"ended on {result.url} with {result.status}: {result.body_text[:200]!r}"
                except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                    ok, problem = False, f"{type(exc).__name__}: {exc}"
            if ok:
                done += 1
            else:
                failed += 1
                first_failure = first_failure or problem

    await asyncio.gather(*(user() for _ in range(users)))
    return done, failed, first_failure


async def measure(target: Target, idp: IdP, idp_pid: int | None, args: argparse.Namespace) -> Sample:
    grants0 = code_grants(idp, target.client_id)
    cpu0, idp0, own0, busy0 = (group_cpu_seconds(target.proc.pid), cpu_seconds([idp_pid]) if idp_pid else 0.0,
                               own_cpu_seconds(), machine_busy_seconds())
    started = time.monotonic()
    done, failed, first_failure = await drive(target.url, args.users, args.duration)
    wall = time.monotonic() - started
    return Sample(done, failed, wall, code_grants(idp, target.client_id) - grants0,
                  group_cpu_seconds(target.proc.pid) - cpu0, (cpu_seconds([idp_pid]) - idp0) if idp_pid else 0.0,
                  own_cpu_seconds() - own0, machine_busy_seconds() - busy0, first_failure)


def workers_setting(value: str) -> int | str:
    return value if value == "auto" else int(value)


def median_and_rounds(values: list[float]) -> str:
    return f"**{statistics.median(values):.2f}×** [{', '.join(f'{v:.2f}' for v in values)}]"


async def main(args: argparse.Namespace) -> int:
    settings = [workers_setting(w) for w in args.workers.split(",")]
    async with Stack() as stack:
        _, nginx_url = await stack.nginx({})
        ports = [free_port() for _ in settings]
        apache_port = free_port()
        clients = clients_for(ports[0], apache_port)
        clients[0]["redirect_uris"] = [f"http://127.0.0.1:{port}/oauth2/callback" for port in ports]
        idp = await stack.idp(clients=clients)
        targets = []
        for port, workers in zip(ports, settings, strict=True):
            extra: dict[str, Any] = {}
            if args.userinfo:
                extra["provider"] = {"issuer": idp.issuer, "client_id": AUTHPROXY_CLIENT[0],
                                     "client_secret": AUTHPROXY_CLIENT[1], "scopes": OIDC_SCOPES,
                                     "extra_authorize_params": {"prompt": "consent"}, "use_userinfo": True}
            proc, url = await stack.authproxy(port, idp.issuer, nginx_url, workers=workers, **extra)
            name = "authproxy" if len(settings) == 1 else f"authproxy workers: {workers}"
            targets.append(Target(name, proc, url, AUTHPROXY_CLIENT[0]))
        apache, apache_url = await stack.apache(apache_port, idp.issuer, nginx_url)
        targets.append(Target("apache", apache, apache_url, APACHE_CLIENT[0]))
        idp_pid = idp._proc.pid if idp._proc is not None else None
        for target in targets:                                                          # warm-up
            _, failed, problem = await drive(target.url, 2, 1.0)
            if failed:
                raise SystemExit(f"{target.name}: a warm-up login failed: {problem}")
        print(f"authproxy {source_version()}; {args.users} users; load average {os.getloadavg()[0]:.1f}", flush=True)
        samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
        for round_ in range(args.rounds):
            shift = round_ % len(targets)
            for target in targets[shift:] + targets[:shift]:
                s = await measure(target, idp, idp_pid, args)
                samples[target.name].append(s)
                print(f"round {round_ + 1} {target.name:22}: {s.logins} logins in {s.wall:.1f}s = {s.rate:.1f}/s "
                      f"({s.grants} code grants), CPU per login: RP {s.per_login_ms(s.rp_cpu):.2f} ms, provider "
                      f"{s.per_login_ms(s.provider_cpu):.2f} ms, client {s.per_login_ms(s.client_cpu):.2f} ms; "
                      f"provider {s.provider_cpu / s.wall:.0%} of a core, machine "
                      f"{s.busy / s.wall / (os.cpu_count() or 1):.0%} busy; failed {s.failed}"
                      + (f" (first: {s.first_failure})" if s.failed else ""), flush=True)
        return report(args, targets, samples, settings) or (await profile(targets[0], args) if args.profile else 0)


def report(args: argparse.Namespace, targets: list[Target], samples: dict[str, list[Sample]],
           settings: list[int | str]) -> int:
    """The table and the ratios; 1 if a login failed or completed without a code exchange at the provider."""
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {source_version()}, {args.users} users, "
          f"{args.duration:.0f}s x {args.rounds} rounds, authproxy workers: {', '.join(map(str, settings))}"
          f"{', authproxy also fetches userinfo' if args.userinfo else ''}")
    print("| | logins/s | code grants / login | RP CPU per login | provider CPU per login | client CPU per login "
          "| provider busy, share of a core | machine busy | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    cpus = os.cpu_count() or 1
    problems = []
    for target in targets:
        rows = samples[target.name]
        logins, failed, grants = (sum(r.logins for r in rows), sum(r.failed for r in rows),
                                  sum(r.grants for r in rows))
        med = {key: statistics.median(value(r) for r in rows) for key, value in {
            "rate": lambda r: r.rate, "rp": lambda r: r.per_login_ms(r.rp_cpu),
            "idp": lambda r: r.per_login_ms(r.provider_cpu), "client": lambda r: r.per_login_ms(r.client_cpu),
            "idp_busy": lambda r: r.provider_cpu / r.wall, "busy": lambda r: r.busy / r.wall / cpus}.items()}
        print(f"| {target.name} | {med['rate']:.1f} | {grants / max(logins, 1):.2f} | {med['rp']:.2f} ms | "
              f"{med['idp']:.2f} ms | {med['client']:.2f} ms | {med['idp_busy']:.0%} | {med['busy']:.0%} | {failed} |")
        if failed:
            problems.append(f"{target.name}: {failed} logins failed, the first: "
                            f"{next(r.first_failure for r in rows if r.failed)}")
        if grants < logins or (not failed and grants != logins):
            problems.append(f"{target.name}: {logins} logins completed but the provider made {grants} code grants")
    apache = samples["apache"]
    print("\nratios authproxy / Apache, each within one round (median [every round]):")
    print("| | logins/s | RP CPU per login |")
    print("|---|---|---|")
    for target in targets[:-1]:
        rows = samples[target.name]
        rates = [a.rate / b.rate for a, b in zip(rows, apache, strict=True)]
        cpus_ = [a.per_login_ms(a.rp_cpu) / b.per_login_ms(b.rp_cpu) for a, b in zip(rows, apache, strict=True)]
        print(f"| {target.name} / Apache | {median_and_rounds(rates)} | {median_and_rounds(cpus_)} |")
    for problem in problems:
        print(f"!!! {problem}")
    return 1 if problems else 0


async def profile(target: Target, args: argparse.Namespace) -> int:
    """One more run of the first authproxy (not in the table) with py-spy sampling it (and its workers):
    where a login's CPU goes."""
    import pyspy
    output = Path(args.profile)
    spy = await pyspy.record(target.proc.pid, args.duration, output)
    await asyncio.sleep(0.3)
    await drive(target.url, args.users, args.duration)
    await asyncio.wait_for(spy.communicate(), 30)
    samples, self_top, files, own = pyspy.hot_spots(output, top=15)
    print(f"\nprofile of {target.name} during logins: {samples} samples, written to {output}")
    for title, rows in (("self time by function", self_top), ("self time by file", files),
                        ("total time of authproxy's functions", own)):
        print(title + ":")
        for name, share in rows:
            print(f"  {share:6.1%}  {name}")
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8, help="concurrent users signing in")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1",
                        help="authproxy's workers setting (1, N or auto), or several separated by commas: one "
                             "authproxy each, e.g. 1,auto")
    parser.add_argument("--userinfo", action="store_true",
                        help="authproxy also fetches userinfo at each login (provider.use_userinfo), as "
                             "mod_auth_openidc does: the same provider round trips for both")
    parser.add_argument("--profile", metavar="FILE", help="also profile authproxy with py-spy in one more run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    targets = len(arguments.workers.split(",")) + 1
    limit = (180 + arguments.rounds * targets * (arguments.duration + 15)
             + (arguments.duration + 40) * bool(arguments.profile))
    sys.exit(run_bounded(lambda: main(arguments), limit))
