"""Benchmark: authproxy against nginx direct and Apache httpd + mod_auth_openidc, with wrk, on loopback.

Starts nginx (one worker: ``/tiny`` and a 100 KB file), the real oidc-provider (tests/idp), authproxy as a
process and Apache with mod_auth_openidc, both in front of that nginx; signs one user in to each proxy
through the provider's login form; then runs wrk against nginx direct, authproxy and Apache in turn — the
order rotating every round — for each scenario (tiny at 1 and 32 connections, 100 KB at 32). It prints
requests/s, p50 and p99 per target and scenario, the CPU each front server spent per request, the ratios
authproxy/nginx and authproxy/Apache computed per round with their median, and authproxy's peak RSS.

    python bench/run.py [--duration 5] [--rounds 3] [--quick] [--profile [FILE]] [--profile-row NAME ...]

Every process is stopped on exit, Ctrl-C and SIGTERM included, and the whole run has a hard time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyspy
from stack import (source_version, Proc, Stack, clients_for, cpu_seconds, free_port, group_pids, login,
                   machine_busy_seconds, peak_rss_kib, probe, run_bounded)
from wrk import WrkResult, run_wrk

OUT = Path(__file__).resolve().parent / "out"
DEFAULT_PROFILE = OUT / "profile-authproxy-tiny-32.txt"
FILE_SIZE = 100 * 1024
# A response whose size differs from the probed 200 by more than this share (plus a few header bytes)
# means wrk was answered with something else, e.g. a 302 to the login page, which wrk does not count.
SIZE_TOLERANCE = 0.05
SIZE_SLACK = 48
WARMUP_SECONDS = 1.0
# Up to this share of socket errors is a note, not a problem: Apache's event MPM stops a child process
# when it has more spare threads than MaxSpareThreads, closing its keep-alive connections; wrk reconnects.
SOCKET_ERROR_SHARE = 0.001


@dataclass(frozen=True)
class Scenario:
    label: str
    path: str
    connections: int


SCENARIOS = (Scenario("tiny, 1 conn", "/tiny", 1), Scenario("tiny, 32 conn", "/tiny", 32),
             Scenario("100 KB, 32 conn", "/100k.bin", 32))
NGINX, AUTHPROXY, APACHE = "nginx-direct", "authproxy", "mod_auth_openidc"
BEFORE = "authproxy-before"          # --before-src: the same authproxy row, from another checkout
LOGGED = "authproxy-log"             # --log-row: the last authproxy row's settings with default logging (info)
APACHE_LOGGED = "mod_auth_openidc-log"   # --log-row: Apache with an access log (combined format), its peer


def is_authproxy(name: str) -> bool:
    """authproxy's own rows: ``authproxy`` and, with ``--workers-row``, ``authproxy-wN``."""
    return name.startswith(AUTHPROXY)


@dataclass
class Target:
    name: str
    url: str
    cookie: str | None
    front: Proc                   # the process (group) that answers wrk: its CPU time is measured

    def cpu(self) -> float:
        return cpu_seconds(group_pids(self.front.pid))


@dataclass
class Run:
    scenario: Scenario
    target: str
    round: int
    result: WrkResult
    cpu_us_per_request: float


def event_loop() -> str:
    """The event loop authproxy runs on: uvloop when installed in this interpreter (``proxy.server.run_loop``)."""
    try:
        return "uvloop " + importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        return "asyncio (uvloop not installed: pip install -e '.[speed]')"


def is_authproxy_cookie(name: str) -> bool:
    return name == "_authproxy" or (name.startswith("_authproxy_") and name[len("_authproxy_"):].isdigit())


def is_apache_cookie(name: str) -> bool:
    return name == "mod_auth_openidc_session"


async def check_session(target: Target, scenario: Scenario) -> str | None:
    """A problem if the target no longer answers this scenario's request with its 200."""
    answer = await probe(target.url + scenario.path, target.cookie)
    if answer.status != 200:
        return f"{target.name} {scenario.path}: the session broke, a probe now gets HTTP {answer.status}"
    return None


def check_run(run: Run, expected_size: int, notes: list[str]) -> list[str]:
    when = "warm-up" if run.round < 0 else f"round {run.round + 1}"
    res, where = run.result, f"{when}, {run.scenario.label}, {run.target}"
    problems = []
    if res.errors["status"]:
        problems.append(f"{where}: {res.errors['status']} responses ≥ 400 (the session broke?)")
    other = {k: v for k, v in res.errors.items() if k != "status" and v}
    if sum(other.values()) > SOCKET_ERROR_SHARE * max(res.requests, 1) and run.round >= 0:
        problems.append(f"{where}: socket errors {other}")
    elif other:
        notes.append(f"{where}: a few socket errors {other} in {res.requests} requests (reconnects)")
    if res.non_2xx:
        problems.append(f"{where}: {res.non_2xx} non-2xx responses {res.statuses}")
    if res.requests and abs(res.bytes_per_response - expected_size) > expected_size * SIZE_TOLERANCE + SIZE_SLACK:
        problems.append(f"{where}: {res.bytes_per_response:.0f} bytes per response where a 200 is {expected_size}"
                        " — some answers were not the page (redirects to the login?)")
    return problems


async def measure(target: Target, scenario: Scenario, duration: float, round_: int,
                  count_statuses: bool = False) -> Run:
    cpu_before = target.cpu()
    result = await run_wrk(target.url + scenario.path, connections=scenario.connections, duration=duration,
                           cookie=target.cookie, count_statuses=count_statuses)
    cpu_used = target.cpu() - cpu_before
    return Run(scenario, target.name, round_, result, cpu_used / max(result.requests, 1) * 1e6)


async def profile_authproxy(target: Target, scenario: Scenario, duration: float, output: Path) -> None:
    """One extra run (not in the table) with py-spy sampling authproxy; prints the hot spots."""
    print(f"\nprofiling {target.name} with py-spy during one more {scenario.label} run ({duration:.0f}s) …")
    spy = await pyspy.record(target.front.pid, duration, output)
    await asyncio.sleep(0.3)                                   # py-spy attaches before the load starts
    await run_wrk(target.url + scenario.path, connections=scenario.connections, duration=duration + 1,
                  cookie=target.cookie)
    _, err = await asyncio.wait_for(spy.communicate(), 30)
    if spy.returncode != 0:
        print(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-2000:]}")
        return
    print(f"profile written to {output}")
    if output.suffix not in (".svg", ".json"):
        samples, self_top, files, own = pyspy.hot_spots(output)
        print(f"{samples} samples. Self time by function (where the CPU was):")
        for name, share in self_top:
            print(f"  {share:6.1%}  {name}")
        print("Self time by file:")
        for name, share in files:
            print(f"  {share:6.1%}  {name}")
        print("Total time of authproxy's own functions (inclusive):")
        for name, share in own:
            print(f"  {share:6.1%}  {name}")


_LOG_RECORD = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b (\S+?):? (.*)")
# The last line of a traceback: "aiohttp.client_exceptions.ClientConnectionResetError: …", "TimeoutError: …".
_EXCEPTION_LINE = re.compile(r"^((?:[a-z_]\w*\.)+[A-Z]\w*|[A-Z]\w*(?:Error|Exception)): (.*)")


def log_summary(log: Path, top: int = 5) -> list[str]:
    """The warnings, errors and exceptions in a log, counted by message (ids and numbers masked)."""
    counts: dict[str, int] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        match = _LOG_RECORD.search(line) or _EXCEPTION_LINE.match(line)
        if match:
            text = re.sub(r"\b(rid=\S+|\d+)", "…", " ".join(match.groups())[:160])
            counts[text] = counts.get(text, 0) + 1
    return [f"{n:>6}× {text}" for text, n in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]


def median_ratio(runs: dict[tuple[str, str, int], Run], scenario: Scenario, num: str, den: str,
                 rounds: int, figure: str = "rps") -> tuple[float, list[float]]:
    """The median over rounds of ``num``'s figure / ``den``'s figure, and each round's ratio."""
    def value(target: str, r: int) -> float:
        run = runs[(scenario.label, target, r)]
        return run.result.rps if figure == "rps" else run.cpu_us_per_request
    ratios = [value(num, r) / value(den, r) for r in range(rounds) if value(den, r)]
    return (statistics.median(ratios) if ratios else float("nan")), ratios


def print_table(runs: dict[tuple[str, str, int], Run], targets: list[str], rounds: int) -> list[dict]:
    rows = []
    print(f"\n{'scenario':<16} {'target':<17} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11}")
    for scenario in SCENARIOS:
        for name in targets:
            mine = [runs[(scenario.label, name, r)] for r in range(rounds)]
            row = {"scenario": scenario.label, "target": name,
                   "rps": statistics.median(m.result.rps for m in mine),
                   "p50_ms": statistics.median(m.result.p50_ms for m in mine),
                   "p99_ms": statistics.median(m.result.p99_ms for m in mine),
                   "cpu_us_per_request": statistics.median(m.cpu_us_per_request for m in mine)}
            rows.append(row)
            print(f"{scenario.label if name == targets[0] else '':<16} {name:<17} {row['rps']:>9.0f} "
                  f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['cpu_us_per_request']:>11.0f}")
    print("\nratios, median of per-round ratios [each round]")
    print(f"{'':<16} {'req/s':<60} {'CPU per request':<30}")
    print(f"{'scenario':<16} {'authproxy / nginx-direct':<29} {'authproxy / mod_auth_openidc':<30} "
          f"{'authproxy / mod_auth_openidc':<30}")
    for ours in [t for t in targets if is_authproxy(t)]:
        if ours != AUTHPROXY:
            print(f"{ours} (in place of authproxy in the headings)")
        for scenario in SCENARIOS:
            cells = ratio_cells(runs, scenario, ours, ((NGINX, "rps"), (APACHE, "rps"), (APACHE, "cpu")), rounds, rows)
            print(f"{scenario.label:<16} {cells[0]:<29} {cells[1]:<30} {cells[2]}")
    return rows


def ratio_cells(runs: dict[tuple[str, str, int], Run], scenario: Scenario, num: str,
                against: tuple[tuple[str, str], ...], rounds: int, rows: list[dict]) -> list[str]:
    """One table cell per ``(denominator, figure)``: the median ratio and each round's; each also added to ``rows``."""
    cells = []
    for den, figure in against:
        med, each = median_ratio(runs, scenario, num, den, rounds, figure)
        cells.append(f"{med:.2f} [{' '.join(f'{x:.2f}' for x in each)}]")
        rows.append({"scenario": scenario.label, "ratio": f"{figure}: {num}/{den}", "median": med, "rounds": each})
    return cells


def print_logged_pair(runs: dict[tuple[str, str, int], Run], rounds: int) -> list[dict]:
    """authproxy with its default access log against Apache with one: the pair issue 15's first goal compares."""
    rows: list[dict] = []
    print(f"\n{LOGGED} / {APACHE_LOGGED} (both writing an access log), median of per-round ratios [each round]")
    print(f"{'scenario':<16} {'req/s':<30} {'CPU per request':<30}")
    for scenario in SCENARIOS:
        cells = ratio_cells(runs, scenario, LOGGED, ((APACHE_LOGGED, "rps"), (APACHE_LOGGED, "cpu")), rounds, rows)
        print(f"{scenario.label:<16} {cells[0]:<30} {cells[1]}")
    return rows


def print_before_after(runs: dict[tuple[str, str, int], Run], after: str, rounds: int,
                       before: str = BEFORE) -> list[dict]:
    """``after`` against ``before``: the change's own effect, as a ratio of figures measured in the same rounds."""
    rows = []
    print(f"\n{after} / {before}, median of per-round ratios [each round]")
    print(f"{'scenario':<16} {'req/s':<30} {'CPU per request':<30}")
    for scenario in SCENARIOS:
        cells = ratio_cells(runs, scenario, after, ((before, "rps"), (before, "cpu")), rounds, rows)
        print(f"{scenario.label:<16} {cells[0]:<30} {cells[1]}")
    return rows


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems: list[str] = []
    notes: list[str] = []
    load_before = os.getloadavg()[0]
    if load_before > 1.0:
        print(f"note: load average {load_before:.1f} before the start: something else is using this machine's "
              "CPUs; the ratios (same-round) are still comparable, the absolute figures less so")
    before_of = log_of = ""
    async with Stack(keep=args.keep) as stack:
        nginx_proc, nginx_url = await stack.nginx({"100k.bin": FILE_SIZE})
        authproxy_port, apache_port = free_port(), free_port()
        clients = clients_for(authproxy_port, apache_port)
        apache_log_port = free_port() if args.log_row else None
        if apache_log_port is not None:        # the logged Apache signs in as the same client, at its own port
            clients[1]["redirect_uris"].append(f"http://127.0.0.1:{apache_log_port}/redirect_uri")
        idp = await stack.idp(clients=clients)
        # One cookie secret for every authproxy instance: the session signed in on the first opens on the
        # second (``--workers-row``), which needs no login of its own.
        cookie = {"secret": base64.urlsafe_b64encode(os.urandom(32)).decode(), "secure": False}
        settings = {"workers": args.workers} if args.workers != 1 else {}
        authproxy_proc, authproxy_url = await stack.authproxy(authproxy_port, idp.issuer, nginx_url,
                                                              source=Path(args.authproxy_src).resolve(),
                                                              cookie=cookie, **settings)
        apache_proc, apache_url = await stack.apache(apache_port, idp.issuer, nginx_url)
        targets = [
            Target(NGINX, nginx_url, None, nginx_proc),
            Target(AUTHPROXY, authproxy_url, await login(authproxy_url + "/tiny", is_authproxy_cookie), authproxy_proc),
            Target(APACHE, apache_url, await login(apache_url + "/tiny", is_apache_cookie), apache_proc),
        ]
        if args.workers_row is not None:
            proc, url = await stack.authproxy(free_port(), idp.issuer, nginx_url,
                                              source=Path(args.authproxy_src).resolve(),
                                              cookie=cookie, workers=args.workers_row)
            targets.append(Target(f"{AUTHPROXY}-w{args.workers_row}", url, targets[1].cookie, proc))
            settings = {"workers": args.workers_row}
        if args.log_row:
            # authproxy's default logging (level info: one access line per request, to its log file), next
            # to the same settings at warning: what the access log costs, as a ratio from the same rounds.
            logged = {**settings, "logging": {"level": "info"}}
            proc, url = await stack.authproxy(free_port(), idp.issuer, nginx_url,
                                              source=Path(args.authproxy_src).resolve(), cookie=cookie, **logged)
            log_of, settings = [t for t in targets if is_authproxy(t.name)][-1].name, logged
            targets.append(Target(LOGGED, url, targets[1].cookie, proc))
            # Its peer: Apache with an access log, one line per request in the combined format, to a file.
            assert apache_log_port is not None
            logged_conf = f'CustomLog "{stack.root}/apache-{apache_log_port}/access.log" combined\n'
            proc, url = await stack.apache(apache_log_port, idp.issuer, nginx_url, extra_conf=logged_conf)
            targets.append(Target(APACHE_LOGGED, url, await login(url + "/tiny", is_apache_cookie), proc))
        if args.before_src is not None:
            # The same settings as the last authproxy row, from another checkout: "before" and "after" measured
            # in one run, against the same baselines, in interleaved order.
            mirrored = [t for t in targets if is_authproxy(t.name)][-1]
            proc, url = await stack.authproxy(free_port(), idp.issuer, nginx_url,
                                              source=Path(args.before_src).resolve(),
                                              cookie=cookie, **settings)
            targets.append(Target(BEFORE, url, targets[1].cookie, proc))
            before_of = mirrored.name
        version = source_version(Path(args.authproxy_src))
        if args.before_src is not None:
            print(f"{BEFORE}: {source_version(Path(args.before_src))} from {Path(args.before_src).resolve()}, "
                  f"in place of {before_of}")
        print(f"authproxy {version}, workers: {args.workers}, event loop: {event_loop()}; "
              f"started in {time.monotonic() - started:.1f}s: nginx {nginx_url}, oidc-provider {idp.issuer}, "
              f"authproxy {authproxy_url} (pid {authproxy_proc.pid}), Apache {apache_url}; temp dir {stack.root}")
        expected: dict[tuple[str, str], int] = {}
        for target in targets:
            for scenario in SCENARIOS:
                answer = await probe(target.url + scenario.path, target.cookie)
                if answer.status != 200:
                    raise RuntimeError(f"{target.name} {scenario.path}: HTTP {answer.status} before the load")
                expected[(target.name, scenario.path)] = answer.size
        # Warm-up, counting every status: Apache spawns its threads, authproxy fills its connection pool.
        for target in targets:
            for scenario in SCENARIOS[1:]:
                run = await measure(target, scenario, WARMUP_SECONDS, -1, count_statuses=True)
                problems += check_run(run, expected[(target.name, scenario.path)], notes)
        runs: dict[tuple[str, str, int], Run] = {}
        busy_before, ours_before, wall_before = machine_busy_seconds(), stack.own_cpu_seconds(), time.monotonic()
        for round_ in range(args.rounds):
            for scenario in SCENARIOS:
                order = targets[round_ % len(targets):] + targets[:round_ % len(targets)]
                for target in order:
                    run = await measure(target, scenario, args.duration, round_)
                    runs[(scenario.label, target.name, round_)] = run
                    problems += check_run(run, expected[(target.name, scenario.path)], notes)
                    if target.cookie and (broken := await check_session(target, scenario)):
                        problems.append(f"round {round_ + 1}: {broken}")
            print(f"round {round_ + 1}/{args.rounds} done ({time.monotonic() - started:.0f}s)", flush=True)
        others = ((machine_busy_seconds() - busy_before) - (stack.own_cpu_seconds() - ours_before)) / \
            ((time.monotonic() - wall_before) * (os.cpu_count() or 1))
        others = max(others, 0.0)       # /proc/stat and the processes' own counts differ by a percent or so
        rss_kib = {pid: peak_rss_kib(pid) for pid in group_pids(authproxy_proc.pid)}
        if args.profile:
            await profile_authproxy(targets[1], SCENARIOS[1], args.duration, Path(args.profile))
        for name in args.profile_row:
            # Each named row profiled the same way, to its own file: e.g. authproxy-log next to authproxy-wauto
            # shows where the access log's CPU goes (the frames the logged row has and the other lacks).
            named = [t for t in targets if t.name == name]
            if not named:
                problems.append(f"--profile-row {name}: no such row (rows: {', '.join(t.name for t in targets)})")
                continue
            await profile_authproxy(named[0], SCENARIOS[1], args.duration, OUT / f"profile-{name}-tiny-32.txt")
        rows = print_table(runs, [t.name for t in targets], args.rounds)
        if log_of:
            rows += print_before_after(runs, LOGGED, args.rounds, log_of)
            rows += print_logged_pair(runs, args.rounds)
        if before_of:
            rows += print_before_after(runs, before_of, args.rounds)
        print("\nauthproxy peak RSS (VmHWM): " + ", ".join(f"{kib / 1024:.1f} MiB (pid {pid})"
                                                          for pid, kib in rss_kib.items()))
        for proc in (authproxy_proc, apache_proc):
            if summary := log_summary(proc.log if proc is authproxy_proc else
                                      stack.root / f"apache-{apache_port}" / "error.log"):
                print(f"{proc.name}'s log, warnings and errors by count:\n" + "\n".join(summary))
    if notes:
        print("\nnotes:\n" + "\n".join(f"  {note}" for note in notes))
    if problems:
        print("\n" + "!" * 78 + "\n!!! PROBLEMS — the figures above are not trustworthy:")
        for problem in problems:
            print(f"!!!   {problem}")
        print("!" * 78)
    OUT.mkdir(exist_ok=True)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "argv": sys.argv[1:], "authproxy": version,
              "duration_s": args.duration, "rounds": args.rounds, "workers": args.workers,
              "workers_row": args.workers_row, "event_loop": event_loop(),
              "authproxy_peak_rss_kib": rss_kib, "load_average_before": load_before,
              "others_cpu_share": others,
              "table": rows, "problems": problems, "notes": notes,
              "runs": [{"scenario": r.scenario.label, "target": r.target, "round": r.round,
                        "cpu_us_per_request": r.cpu_us_per_request, **r.result.as_dict()} for r in runs.values()]}
    (OUT / "run.json").write_text(json.dumps(report, indent=1))
    print(f"\nother processes on this machine used {others:.0%} of its CPU during the measured runs "
          f"(load average {load_before:.1f} before the start)")
    print(f"all figures: {OUT / 'run.json'}; took {time.monotonic() - started:.0f}s")
    return 1 if problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every case once (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s per run, 1 round")
    parser.add_argument("--profile", nargs="?", const=str(DEFAULT_PROFILE), metavar="FILE",
                        help="also profile authproxy with py-spy during one extra 32-connection tiny run; FILE "
                             "ending .svg = flame graph, .json = speedscope, else collapsed stacks "
                             f"(default {DEFAULT_PROFILE})")
    parser.add_argument("--profile-row", action="append", default=[], metavar="NAME",
                        help="also profile this row (e.g. authproxy-log, authproxy-wauto) like --profile, after the "
                             "rounds, to bench/out/profile-NAME-tiny-32.txt; repeatable")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="hard limit for the whole run in seconds (default: twice the planned time + 2 min)")
    parser.add_argument("--workers", type=int, default=1,
                        help="authproxy's `workers` setting (default 1: one process, as configured by default)")
    parser.add_argument("--workers-row", default=None, metavar="N|auto",
                        help="also run a second authproxy with `workers: N` (e.g. auto: one per core, like Apache's "
                             "processes) as its own row, with its own ratios")
    parser.add_argument("--authproxy-src", default=str(Path(__file__).resolve().parents[1]), metavar="DIR",
                        help="the checkout whose proxy/ package runs (default: this one), e.g. a `git worktree` "
                             "of another commit, to compare two versions with the same command")
    parser.add_argument("--before-src", default=None, metavar="DIR",
                        help="also run authproxy from this checkout (e.g. a `git worktree` of main before a change) "
                             "with the settings of the last authproxy row, and print after/before ratios")
    parser.add_argument("--log-row", action="store_true",
                        help="also run authproxy with the last row's settings and default logging (level info: an "
                             "access line per request) as the row authproxy-log, and print its ratios to that row; "
                             "with --before-src, the before row logs too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    if args.time_limit is None:
        rows = 3 + bool(args.workers_row) + bool(args.before_src) + args.log_row
        profiles = bool(args.profile) + len(args.profile_row)
        planned = args.rounds * len(SCENARIOS) * rows * (args.duration + 1) + (args.duration + 5) * profiles
        args.time_limit = 2 * planned + 120
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_bounded(lambda: main(arguments), arguments.time_limit))
