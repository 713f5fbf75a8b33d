#!/usr/bin/env python3
"""Issue 15's goals that are ratios, each next to its goal, from one bench/run.py run (and optionally one idle.py run).

Reads ``bench/out/run.json`` as written by::

    python bench/run.py --workers-row auto --log-row [--rounds 3 --duration 5]

whose rows are ``nginx-direct``, ``authproxy`` (one process, logging at warning), ``mod_auth_openidc``,
``authproxy-wauto`` (``workers: auto``, warning) and ``authproxy-log`` (``workers: auto`` with the default
logging, ``level: info``: one access line per request). Every ratio is computed within a round (the targets
of a round ran back to back) and shown as the median with each round's value, as run.py does:

- tiny GET at 32 connections, ``workers: auto``, default logging, against Apache *with an access log*
  (a row ``mod_auth_openidc-log`` if run.json has one; run.py has none today, and then the plain Apache row is
  used and the output says so): requests/s ≥ 1.5×, p99 no worse (≤ 1.0×);
- one process against Apache, tiny GET at 32 connections: ≥ 1.0×;
- CPU per request against Apache's: ≤ 0.6× at 32 connections, ≤ 1.0× at one connection;
- the access log's cost: requests/s of ``authproxy-log`` over ``authproxy-wauto`` ≥ 0.95× (and, steadier, its
  CPU per request ≤ 1/0.95×);
- the latency added at one connection (p50 over nginx direct's) against Apache's: ≤ 1.0×.

With ``--idle FILE`` (the ``--json`` of bench/idle.py), also the memory goals: ≤ 4 KiB per idle keep-alive
connection, ≤ 16 KiB per idle WebSocket, and the ratios to Apache when that run measured it.

    python bench/summary.py [--run bench/out/run.json] [--idle idle.json]

Exit status 0 whatever the figures say (this reports, it does not judge); 2 if a row it needs is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NGINX, ONE, APACHE, AUTO, LOGGED = "nginx-direct", "authproxy", "mod_auth_openidc", "authproxy-wauto", "authproxy-log"
# Apache with an access log (CustomLog), the row issue 15's first goal names: used when run.json has it.
APACHE_LOGGED = "mod_auth_openidc-log"
TINY_1, TINY_32 = "tiny, 1 conn", "tiny, 32 conn"
# What a run.py JSON file must come from for the figures to mean what the goals say.
COMMAND = "python bench/run.py --workers-row auto --log-row"


@dataclass
class Goal:
    what: str
    scenario: str
    figure: Callable[[dict[str, dict[str, Any]]], float]     # from one round's runs by target
    bound: float
    higher_is_better: bool


def per_round(runs: list[dict[str, Any]], scenario: str) -> list[dict[str, dict[str, Any]]]:
    """Each round's runs of ``scenario``, by target."""
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        if run["scenario"] == scenario and run["round"] >= 0:
            rounds.setdefault(run["round"], {})[run["target"]] = run
    return [rounds[r] for r in sorted(rounds)]


def ratio(num: str, den: str, key: str) -> Callable[[dict[str, dict[str, Any]]], float]:
    return lambda by: float(by[num][key]) / float(by[den][key])


def added_latency(ours: str) -> Callable[[dict[str, dict[str, Any]]], float]:
    """Median latency ``ours`` adds to nginx direct over what Apache adds, at one connection."""
    def figure(by: dict[str, dict[str, Any]]) -> float:
        base = float(by[NGINX]["p50_ms"])
        return (float(by[ours]["p50_ms"]) - base) / (float(by[APACHE]["p50_ms"]) - base)
    return figure


def goals(logged_apache: str) -> list[Goal]:
    """The goals; the first two against ``logged_apache`` (Apache with an access log when run.py has one)."""
    apache = "Apache with access log" if logged_apache == APACHE_LOGGED else "Apache (no access log)"
    return [
        Goal(f"tiny GET, 32 conn, workers: auto, default logging / {apache}: req/s", TINY_32,
             ratio(LOGGED, logged_apache, "rps"), 1.5, True),
        Goal("  the same: p99 latency", TINY_32, ratio(LOGGED, logged_apache, "p99_ms"), 1.0, False),
        *GOALS,
    ]


GOALS = [
    Goal("tiny GET, 32 conn, one process (logging: warning) / Apache: req/s", TINY_32,
         ratio(ONE, APACHE, "rps"), 1.0, True),
    Goal("CPU per request, 32 conn, workers: auto, default logging / Apache", TINY_32,
         ratio(LOGGED, APACHE, "cpu_us_per_request"), 0.6, False),
    Goal("CPU per request, 32 conn, workers: auto, logging: warning / Apache", TINY_32,
         ratio(AUTO, APACHE, "cpu_us_per_request"), 0.6, False),
    Goal("CPU per request, 1 conn, one process / Apache", TINY_1,
         ratio(ONE, APACHE, "cpu_us_per_request"), 1.0, False),
    Goal("CPU per request, 1 conn, workers: auto, default logging / Apache", TINY_1,
         ratio(LOGGED, APACHE, "cpu_us_per_request"), 1.0, False),
    Goal("access log: req/s with it / without (workers: auto, 32 conn)", TINY_32,
         ratio(LOGGED, AUTO, "rps"), 0.95, True),
    Goal("  the same as CPU per request, with it / without (steadier on a shared machine)", TINY_32,
         ratio(LOGGED, AUTO, "cpu_us_per_request"), 1 / 0.95, False),
    Goal("latency added at 1 conn (p50 over nginx direct), one process / Apache's", TINY_1,
         added_latency(ONE), 1.0, False),
    Goal("  the same, workers: auto, default logging", TINY_1, added_latency(LOGGED), 1.0, False),
]


def verdict(value: float, bound: float, higher_is_better: bool) -> str:
    met = value >= bound if higher_is_better else value <= bound
    return "met" if met else "not met"


def print_run_goals(report: dict[str, Any]) -> int:
    runs = report["runs"]
    targets = {run["target"] for run in runs}
    missing = {NGINX, ONE, APACHE, AUTO, LOGGED} - targets
    if missing:
        print(f"run.json lacks the rows {sorted(missing)}: run `{COMMAND}`", file=sys.stderr)
        return 2
    print(f"run.json: {report['date']}, authproxy {report['authproxy']}, {report['rounds']} rounds of "
          f"{report['duration_s']} s, event loop {report.get('event_loop', '?')}, other processes used "
          f"{report.get('others_cpu_share', 0):.0%} of the CPU; argv: {' '.join(report.get('argv', []))}")
    print("\n| goal (issue 15) | measured: median [each round] | goal | |")
    print("|---|---|---|---|")
    logged_apache = APACHE_LOGGED if APACHE_LOGGED in targets else APACHE
    for goal in goals(logged_apache):
        values = [goal.figure(by) for by in per_round(runs, goal.scenario)]
        med = statistics.median(values)
        print(f"| {goal.what} | **{med:.2f}×** [{', '.join(f'{v:.2f}' for v in values)}] | "
              f"{'≥' if goal.higher_is_better else '≤'} {goal.bound:.2f}× | "
              f"{verdict(med, goal.bound, goal.higher_is_better)} |")
    if logged_apache == APACHE:
        print(f"\nnote: this run has no Apache with an access log (a row named {APACHE_LOGGED}); run.py's Apache "
              "writes none (stack.APACHE_CONF has no CustomLog), so the first two goals are measured against an "
              "Apache spared what its log would cost it.")
    return 0


def print_idle_goals(phases: list[dict[str, Any]]) -> None:
    bounds = {"idle keep-alive connections": 4.0, "idle WebSockets (both sides)": 16.0}
    by = {(p.get("target", "authproxy"), p["name"]): p for p in phases}
    print("\n| idle (bench/idle.py) | authproxy KiB each | goal | | Apache KiB each | authproxy / Apache |")
    print("|---|---|---|---|---|---|")
    for name, bound in bounds.items():
        ours = by.get(("authproxy", name))
        if ours is None:
            continue
        theirs = by.get(("apache", name))
        kib = ours["per_connection_kib"]
        apache = f"{theirs['per_connection_kib']:.1f} | {kib / theirs['per_connection_kib']:.2f}×" if theirs else " | "
        print(f"| {name} ({ours['count']:,}) | **{kib:.1f}** | ≤ {bound:.0f} | {verdict(kib, bound, False)} "
              f"| {apache} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(HERE / "out" / "run.json"),
                        help="run.py's JSON (default bench/out/run.json)")
    parser.add_argument("--idle", metavar="FILE", help="bench/idle.py's --json output, for the memory goals")
    args = parser.parse_args(argv)
    status = print_run_goals(json.loads(Path(args.run).read_text()))
    if args.idle:
        print_idle_goals(json.loads(Path(args.idle).read_text()))
    return status


if __name__ == "__main__":
    sys.exit(main())
