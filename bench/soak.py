"""Soak: many users on authproxy for a while, with the faults production sees, and what they cost.

For each session store in turn (the cookie store, then Redis) it starts the real oidc-provider (rotating
refresh tokens, ``--ttl`` second access tokens), two upstreams (one on a loopback port, one on a unix
socket), redis-server and authproxy as ``python -m proxy`` with ``workers: 2``; signs in ``--users`` users,
each with its own cookie jar; and drives page loads, API calls, 2 MiB uploads, 3 MiB downloads, server-sent
events, WebSockets held open, sign-outs and new sign-ins for ``--duration`` seconds, while it injects, one
after another with quiet time between them:

  hostile burst · SIGHUP with a changed config · provider slow (frozen 5 s at a time, twice) · the TCP
  upstream restarted · kill -9 of a worker · provider down longer than a token's life · Redis restarted ·
  Redis down (``--redis-down`` s) · SIGHUP with a broken config, then a good one · users holding a
  WebSocket sign out together

(the Redis faults with the Redis store only). It prints the figures and writes them to ``--json``: requests
by outcome and by phase (steady, during and after each fault) with p50/p99 latency; the zero goals —
sessions lost, unexpected 5xx, refresh grants refused by the provider, WebSockets closed wrongly or left
open after their session ended; RSS and open fds of each authproxy process at the start and the end; and
how long after each fault its failures went on. bench/soak_report.py says which failures a fault explains.
Exit status 1 when a goal is missed.

    python bench/soak.py [--users 200] [--duration 600] [--ttl 30] [--store cookie --store redis] [--json F]

Everything listens on 127.0.0.1; every loop ends by itself, and ``run_bounded`` stops it all at a hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_load import Load, User, hostile_burst
from soak_report import NOTHING, PROVIDER, REDIS, RELOAD, UPSTREAM, WORKER, Fault, analyse
from soak_stack import SoakStack
from stack import Stack, run_bounded, source_version

# Seconds of load after the last fault, so "after" has requests in it and the end is measured calm.
TAIL = 8.0
# How many users sign in at once at the start.
LOGIN_CONCURRENCY = 10
# The provider's "slow" answers: frozen this long, this many times, with a breath between.
SLOW_FOR, SLOW_TIMES, SLOW_GAP = 5.0, 2, 1.0
# How many users holding a WebSocket sign out together near the end (the socket must close with the session).
SIGN_OUTS = 5


class Injector:
    """Runs the faults in order, each recorded as a ``Fault`` with its real start and end."""

    def __init__(self, soak: SoakStack, load: Load, args: argparse.Namespace, rng: random.Random,
                 users: list[User]) -> None:
        self.soak, self.load, self.args, self.rng, self.users = soak, load, args, rng, users
        self.faults: list[Fault] = []

    def plan(self) -> list[tuple[str, float]]:
        """(fault, its expected seconds), in order."""
        steps = [("hostile", 3.0), ("sighup", 1.0), ("provider_slow", SLOW_TIMES * (SLOW_FOR + SLOW_GAP)),
                 ("upstream_restart", 3.0), ("kill_worker", 3.0), ("provider_down", self.args.ttl + 3.0)]
        if self.soak.store == "redis":
            steps += [("redis_restart", 1.0), ("redis_down", self.args.redis_down)]
        return [*steps, ("sighup_broken", 2.0), ("sign_outs", 2.0)]

    async def run(self, start_at: float, end_at: float) -> None:
        """Spread the faults between ``start_at`` and ``end_at`` (load seconds), at least 2 s apart."""
        steps = self.plan()
        busy = sum(seconds for _, seconds in steps)
        gap = max(2.0, (end_at - TAIL - start_at - busy) / len(steps))
        await asyncio.sleep(max(0.0, start_at - self.load.now()))
        for name, _ in steps:
            await asyncio.sleep(gap)
            fault = Fault(name, NOTHING, self.load.now())
            self.faults.append(fault)
            print(f"  {fault.start:6.1f}s  {name}", file=sys.stderr, flush=True)
            await getattr(self, name)(fault)
            fault.end = fault.end or self.load.now()

    async def hostile(self, fault: Fault) -> None:
        await hostile_burst(self.load, 120, self.rng)

    async def sighup(self, fault: Fault) -> None:
        fault.kind = RELOAD
        changed = {**self.soak.config, "limits": {"max_connections": 2000}}
        self.soak.reload(changed)
        await asyncio.sleep(1.0)

    async def sighup_broken(self, fault: Fault) -> None:
        """A broken file (rejected: nothing may change), then the good one again (a reload: see sighup)."""
        self.soak.reload("listen: [this is not\nprovider: 3\n")
        await asyncio.sleep(1.0)
        fault.end = self.load.now()
        restore = Fault("sighup_restore", RELOAD, fault.end)
        self.faults.append(restore)
        self.soak.reload(self.soak.config)
        await asyncio.sleep(1.0)
        restore.end = self.load.now()

    async def sign_outs(self, fault: Fault) -> None:
        """Users with a WebSocket open sign out: each socket must be closed by the proxy (not a fault: no
        failure is explained by it), whatever the random mix of actions did so far."""
        holding = [u for u in self.users if u.signed_in and u.ws_task is not None and not u.ws_task.done()]
        fault.notes["users"] = len(holding[:SIGN_OUTS])
        await asyncio.gather(*(user.sign_out_now() for user in holding[:SIGN_OUTS]))

    async def provider_slow(self, fault: Fault) -> None:
        fault.kind = PROVIDER
        assert self.soak.idp is not None
        for _ in range(SLOW_TIMES):
            self.soak.idp.freeze()
            try:
                await asyncio.sleep(SLOW_FOR)
            finally:
                self.soak.idp.thaw()
            await asyncio.sleep(SLOW_GAP)

    async def provider_down(self, fault: Fault) -> None:
        fault.kind = PROVIDER
        assert self.soak.idp is not None
        await self.soak.idp.pause()
        await asyncio.sleep(self.args.ttl + 2.0)
        await self.soak.idp.resume()

    async def upstream_restart(self, fault: Fault) -> None:
        fault.kind = UPSTREAM
        await self.soak.restart_upstream(1.0)

    async def kill_worker(self, fault: Fault) -> None:
        fault.kind = WORKER
        fault.notes["replaced_in_s"] = round(await self.soak.kill_worker(), 2)

    async def redis_restart(self, fault: Fault) -> None:
        fault.kind = REDIS
        await self.soak.redis_down(0.0)

    async def redis_down(self, fault: Fault) -> None:
        fault.kind = REDIS
        await self.soak.redis_down(self.args.redis_down)


async def sign_in_all(users: list[User]) -> None:
    sem = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(user: User) -> None:
        async with sem:
            for _ in range(3):
                if await user.login():
                    return
            raise RuntimeError(f"user {user.number} could not sign in: {user.load.records[-1]}")
    await asyncio.gather(*(one(user) for user in users))


async def soak_one(store: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    samples: list[dict[str, Any]] = []
    async with Stack() as stack:
        soak = SoakStack(stack=stack, store=store, ttl=args.ttl)
        try:
            await soak.start()
            load = Load(url=soak.url, end=float("inf"))
            users = [User(load, i, random.Random(rng.random())) for i in range(args.users)]
            try:
                await sign_in_all(users)
                before = soak.resources()
                planned_end = load.now() + args.duration
                injector = Injector(soak, load, args, rng, users)
                running = [asyncio.create_task(user.run()) for user in users]
                sampler = asyncio.create_task(sample(soak, load, args.sample, samples))
                await injector.run(start_at=load.now() + min(10.0, args.duration / 10), end_at=planned_end)
                load.end = max(planned_end, load.now() + TAIL)      # faults that ran long push the end out
                await asyncio.gather(*running)
                sampler.cancel()
                await asyncio.sleep(1.0)
                after = soak.resources()
            finally:
                await asyncio.gather(*(user.close() for user in users))
            assert soak.idp is not None
            grants = {"refresh_ok": soak.idp.count_grants("refresh_token"),
                      "refresh_refused": soak.idp.count_grants("refresh_token", ok=False),
                      "code_ok": soak.idp.count_grants("authorization_code"),
                      "code_refused": soak.idp.count_grants("authorization_code", ok=False)}
            report = analyse(load, injector.faults, grants, records=args.records)
            report.update(store=store, users=args.users, duration_s=round(load.now(), 1), ttl_s=args.ttl,
                          resources={"start": before, "end": after, "samples": samples,
                                     "growth": growth(samples)})
            if report["goals"]["refresh_grants_refused"]:
                report["refused_grant_events"] = [e for e in soak.idp.events() if e.get("event") == "grant"
                                                  and e.get("ok") is False][:20]
            if soak.proxy is not None:
                report["authproxy_log_tail"] = soak.proxy.log_tail(40)
                if args.json:                          # the whole log, for the evidence behind a finding
                    Path(f"{args.json}.authproxy-{store}.log").write_bytes(soak.proxy.log.read_bytes())
            return report
        finally:
            await soak.close()


async def sample(soak: SoakStack, load: Load, every: float, into: list[dict[str, Any]]) -> None:
    """RSS and fds of each process every ``every`` seconds: growth over a run is told from a plateau
    only by its shape, not by two end points."""
    while True:
        into.append({"t": round(load.now(), 1), "processes": soak.resources()})
        await asyncio.sleep(every)


def growth(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per process role: the highest RSS (MiB) in each third of the run. A leak keeps climbing from the
    second third to the last; a plateau (caches and pools filled, allocator arenas) does not. A role
    whose process was replaced (a worker killed) is counted from its newest process only."""
    out: dict[str, dict[str, float]] = {}
    roles = {role for s in samples for role in s["processes"]}
    for role in sorted(roles):
        points = [(s["t"], s["processes"][role]) for s in samples if role in s["processes"]]
        newest = points[-1][1]["pid"]
        points = [(t, p["rss_kib"] / 1024) for t, p in points if p["pid"] == newest]
        if len(points) < 6:
            continue
        third = len(points) // 3
        parts = [points[:third], points[third:2 * third], points[2 * third:]]
        first, middle, last = (max(v for _, v in part) for part in parts)
        out[role] = {"first_third_max_mib": round(first, 1), "middle_third_max_mib": round(middle, 1),
                     "last_third_max_mib": round(last, 1), "samples": len(points),
                     "last_over_middle": round(last / middle, 3)}
    return out


def summary(report: dict[str, Any]) -> str:
    lines = [f"store={report['store']} users={report['users']} duration={report['duration_s']}s "
             f"ttl={report['ttl_s']}s requests={report['requests']}",
             "  goals: " + ", ".join(f"{k}={v}" for k, v in report["goals"].items()),
             "  grants: " + ", ".join(f"{k}={v}" for k, v in report["grants"].items())
             + f"; sessions lost to a killed worker's grant: {report['sessions_lost_to_a_killed_worker']}",
             "  websockets: " + ", ".join(f"{k}={v}" for k, v in report["websockets"].items()),
             f"  unexplained failures (any kind): {report['unexplained_failure_count']}"]
    for fault in report["faults"]:
        lines.append(f"  {fault['name']:17} {fault['start']:6.1f}-{fault['end']:6.1f}s "
                     f"recovered +{fault['recovered_after_s']}s  explained={sum(fault['explained'].values())}")
    for name, phase in report["phases"].items():
        lines.append(f"  {name:28} n={phase['requests']:6} p50={phase['p50_ms']}ms p99={phase['p99_ms']}ms")
    for when in ("start", "end"):
        lines.append(f"  {when:5} " + " ".join(f"{role}:{r['rss_kib'] // 1024}MiB/{r['fds']}fd"
                                                for role, r in report["resources"][when].items()))
    for role, g in report["resources"]["growth"].items():
        lines.append(f"  rss {role}: max per third {g['first_third_max_mib']} / {g['middle_third_max_mib']} / "
                     f"{g['last_third_max_mib']} MiB (last/middle {g['last_over_middle']}, {g['samples']} samples)")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    reports = []
    for store in args.store or ["cookie", "redis"]:
        print(f"soak: {store} store, {args.users} users, {args.duration:.0f}s", file=sys.stderr, flush=True)
        report = await soak_one(store, args)
        print(summary(report), flush=True)
        reports.append(report)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": source_version(),
              "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
              "command": " ".join(sys.argv), "runs": reports}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if any(v for r in reports for v in r["goals"].values()) else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load per store")
    parser.add_argument("--ttl", type=int, default=30, help="the provider's access-token lifetime, seconds")
    parser.add_argument("--redis-down", type=float, default=20.0, help="seconds Redis stays down")
    parser.add_argument("--store", action="append", choices=["cookie", "redis"])
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", help="write the figures here (and authproxy's log beside it)")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between RSS/fd samples")
    parser.add_argument("--records", action="store_true", help="put every request's record in the JSON too")
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    stores = len(options.store or ["cookie", "redis"])
    limit = stores * (options.duration + 4 * options.ttl + 300)
    raise SystemExit(run_bounded(lambda: main(options), limit))
