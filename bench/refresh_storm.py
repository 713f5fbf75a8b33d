"""Benchmark: a refresh storm — 32 connections on one session whose access token lives 3 seconds.

A separate oidc-provider issues 3-second access tokens and rotates refresh tokens (a spent refresh token
presented again is refused, and oidc-provider then revokes the grant). authproxy and Apache +
mod_auth_openidc, in turn, each get a fresh login and then ``--duration`` seconds of wrk at 32
connections with that session's cookie. wrk never takes cookies from responses, so authproxy's re-sealed
cookie never comes back: every request carries the original refresh token, and what is measured is
authproxy's single flight plus its recent-results cache. Apache keeps its session server-side
(``OIDCSessionType server-cache``), so its cookie never changes anyway.

Counted per proxy: refresh grants at the provider (successful and refused, told apart by client_id),
non-2xx answers (a 401 or a 302 to the login page means the session was lost), and at the upstream the
distinct access tokens and the requests forwarded with a token older than its lifetime (see
token_upstream.py). A perfect proxy makes about one grant per (ttl − refresh window), fails none, answers
only 200, and forwards no stale token.

    python bench/refresh_storm.py [--duration 15] [--rounds 1] [--ttl 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import AUTHPROXY, APACHE, OUT, is_apache_cookie, is_authproxy_cookie, log_summary
from stack import (source_version, APACHE_CLIENT, AUTHPROXY_CLIENT, Stack, clients_for, free_port, login, probe,
                   run_bounded, wait_port)
from wrk import run_wrk

HERE = Path(__file__).resolve().parent
CONNECTIONS = 32


def grants(idp, client_id: str) -> dict[str, int]:
    """Refresh grants of one client so far, by outcome, from the provider's event log."""
    counts: dict[str, int] = {"ok": 0, "failed": 0}
    for event in idp.events():
        if event.get("event") == "grant" and event.get("grant_type") == "refresh_token" \
                and event.get("client_id") == client_id:
            counts["ok" if event.get("ok") else "failed"] += 1
            if not event.get("ok"):
                error = f"error {event.get('error')}: {event.get('error_description')}"
                counts[error] = counts.get(error, 0) + 1
    return counts


async def upstream_call(url: str, method: str = "GET") -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.request(method, url) as resp:
            return await resp.json()


async def storm(name: str, url: str, client_id: str, cookie_filter, idp, upstream_url: str,
                duration: float) -> dict:
    await upstream_call(upstream_url + "/__reset", "POST")
    cookie = await login(url + "/", cookie_filter, username=f"storm-{name}-{time.monotonic_ns()}")
    before = grants(idp, client_id)
    result = await run_wrk(url + "/", connections=CONNECTIONS, duration=duration, cookie=cookie,
                           count_statuses=True)
    after = grants(idp, client_id)
    seen = (await upstream_call(upstream_url + "/__stats")).get(name, {})
    alive = await probe(url + "/", cookie)
    return {"proxy": name, "requests": result.requests, "rps": round(result.rps, 1),
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
            "non_2xx": result.non_2xx or 0, "socket_errors": {k: v for k, v in result.errors.items()
                                                              if k != "status" and v},
            "refresh_ok": after["ok"] - before["ok"], "refresh_failed": after["failed"] - before["failed"],
            "refusals": {k: v - before.get(k, 0) for k, v in after.items()
                         if k.startswith("error") and v - before.get(k, 0)},
            "upstream_requests": seen.get("requests", 0), "tokens_seen": seen.get("tokens", 0),
            "stale_token_requests": seen.get("stale", 0), "p99_ms": result.p99_ms,
            "session_alive_after": alive.status == 200, "probe_status_after": alive.status}


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    rows: list[dict] = []
    async with Stack(keep=args.keep) as stack:
        upstream_port = free_port()
        upstream = await stack.spawn("token-upstream", [sys.executable, str(HERE / "token_upstream.py"),
                                                        "--port", str(upstream_port), "--ttl", str(args.ttl)])
        await wait_port(upstream_port, upstream, "token upstream")
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        authproxy_port, apache_port = free_port(), free_port()
        idp = await stack.idp(clients=clients_for(authproxy_port, apache_port), access_token_ttl=args.ttl,
                              rotate_refresh_token=True)
        _, authproxy_url = await stack.authproxy(authproxy_port, idp.issuer, upstream_url,
                                                 source=Path(args.authproxy_src).resolve())
        _, apache_url = await stack.apache(apache_port, idp.issuer, upstream_url,
                                           refresh_before_expiry=args.apache_refresh_before)
        proxies = [(AUTHPROXY, authproxy_url, AUTHPROXY_CLIENT[0], is_authproxy_cookie),
                   (APACHE, apache_url, APACHE_CLIENT[0], is_apache_cookie)]
        for round_ in range(args.rounds):
            for name, url, client_id, cookie_filter in proxies[round_ % 2:] + proxies[:round_ % 2]:
                print(f"round {round_ + 1}: {name}, {args.duration:.0f}s at {CONNECTIONS} connections …", flush=True)
                row = await storm(name, url, client_id, cookie_filter, idp, upstream_url, args.duration)
                rows.append({"round": round_ + 1, **row})
        logs = {"authproxy": log_summary(stack.root / f"authproxy-{authproxy_port}.log"),
                "mod_auth_openidc": log_summary(stack.root / f"apache-{apache_port}" / "error.log")}
    window = min(60.0, args.ttl / 2)      # authproxy: refresh_before (60 s) capped at half the lifetime
    print(f"\nauthproxy {source_version(Path(args.authproxy_src))}; access tokens live {args.ttl:g}s, "
          f"refresh tokens rotate; {args.duration:.0f}s at {CONNECTIONS} "
          f"connections, one session per run.\nA perfect single flight makes about duration/(ttl − window) "
          f"grants: authproxy {args.duration / (args.ttl - window):.0f} (window {window:g}s), mod_auth_openidc "
          f"{args.duration / max(args.ttl - args.apache_refresh_before, 0.5):.0f} "
          f"(OIDCRefreshAccessTokenBeforeExpiry {args.apache_refresh_before}).\n")
    head = (f"{'round':>5} {'proxy':<17} {'requests':>9} {'req/s':>7} {'non-2xx':>8} {'refresh ok':>10} "
            f"{'refused':>8} {'tokens':>7} {'stale fwd':>9} {'alive':>6}  statuses")
    print(head)
    for r in rows:
        print(f"{r['round']:>5} {r['proxy']:<17} {r['requests']:>9} {r['rps']:>7.0f} {r['non_2xx']:>8} "
              f"{r['refresh_ok']:>10} {r['refresh_failed']:>8} {r['tokens_seen']:>7} {r['stale_token_requests']:>9} "
              f"{'yes' if r['session_alive_after'] else 'NO':>6}  {r['statuses']}"
              + (f" socket errors {r['socket_errors']}" if r["socket_errors"] else ""))
        for refusal, n in r["refusals"].items():
            print(f"{'':>24}refused {n}×: {refusal}")
    broken = [r for r in rows if r["non_2xx"] or r["refresh_failed"] or not r["session_alive_after"]]
    if broken:
        print("\n!!! sessions broke or refresh tokens were spent twice: " +
              ", ".join(f"round {r['round']} {r['proxy']}" for r in broken))
    for name, summary in logs.items():
        if summary:
            print(f"\n{name}'s log, warnings and errors by count:\n" + "\n".join(summary))
    OUT.mkdir(exist_ok=True)
    record = {"args": vars(args), "authproxy": source_version(Path(args.authproxy_src)), "rows": rows}
    (OUT / "refresh_storm.json").write_text(json.dumps(record, indent=1))
    print(f"\nall figures: {OUT / 'refresh_storm.json'}; took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per proxy (default 15)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, alternating which proxy goes first")
    parser.add_argument("--ttl", type=int, default=3, help="access token lifetime at the provider (default 3 s)")
    parser.add_argument("--apache-refresh-before", type=int, default=1,
                        help="OIDCRefreshAccessTokenBeforeExpiry seconds (default 1; whole seconds only)")
    parser.add_argument("--authproxy-src", default=str(HERE.parent), metavar="DIR",
                        help="the checkout whose proxy/ package runs (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    arguments = parser.parse_args()
    limit = arguments.rounds * 2 * (arguments.duration + 20) + 120
    sys.exit(run_bounded(lambda: main(arguments), limit))
