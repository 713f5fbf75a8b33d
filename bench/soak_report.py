"""Judging a soak's records against its faults: the figures bench/soak.py prints and writes.

**Which failures a fault explains.** Every fault has a window, from when it was injected to when it was
undone, plus ``GRACE`` seconds (a loaded 2-core machine; connections the proxy pooled to a server that
died). A failed request is explained when its own time span overlaps the window of a fault that can cause
that failure, by this table and nothing else:

- the provider down or slow: 502/503/504, sign-ins and sign-outs that fail (they go through it), and
  WebSockets closed with 1013 ("try again later") when their access token expired meanwhile (it cannot be
  renewed; the session stays, as proxy/websocket.py's watcher does by design and its unit tests pin);
- the TCP upstream restarted: 502/503/504, cut connections and short bodies or streams on that upstream only;
- Redis killed or down: 503 (the Redis store says so for every Redis failure), failed sign-ins and sign-outs,
  WebSockets closed with 1013 at their token's expiry (the refresh needs Redis's lock);
- a worker killed: cut connections, short bodies and streams, WebSockets closed (whatever that worker held);
- SIGHUP with a good configuration: WebSockets closed with 1001 (going away), as docs/deployment.md says a
  reload does (the old listener drains like on SIGTERM); they are counted apart, not as closed wrongly;
- SIGHUP with a broken configuration (rejected, nothing changes), and the hostile burst: nothing.

**Time to recover** after a fault: from when it was undone to the start of the last request it explains
(0 when every failure began while it lasted). Streams cut by a fault began before it, so they count as 0.

A 401 or a redirect to the login page for a user who never signed out is a session lost, whatever the
faults, with one exception counted apart: the user's refresh grant was in flight on a worker killed with
``kill -9`` (see ``analyse``). A WebSocket still open 5 s after its user's sign-out is left open, unless
the proxy answered that sign-out with a 5xx (it could not end the session: Redis down).
A 5xx not explained is an unexpected 5xx; a 500 is never explained.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from soak_load import Load, Record

# Seconds after a fault is undone during which its failures still count as its own.
GRACE = 5.0
# Seconds after a fault whose requests form its "after" phase.
AFTER = 10.0

PROVIDER, UPSTREAM, REDIS, WORKER, RELOAD, NOTHING = "provider", "upstream", "redis", "worker", "reload", "nothing"
CUT = ("error:", "short", "closed")


@dataclass
class Fault:
    name: str
    kind: str                  # PROVIDER, UPSTREAM, REDIS, WORKER or NOTHING
    start: float
    end: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def explains(fault: Fault, record: Record) -> bool:
    if record.start > fault.end + GRACE or record.end < fault.start:
        return False
    outcome = record.outcome
    gateway = outcome in ("status:502", "status:503", "status:504")
    cut = outcome.startswith(CUT)
    signing = record.kind in ("login", "logout") and outcome != "ok"
    # A WebSocket whose access token expired while it could not be renewed ends with 1013 (the session
    # stays: the next request refreshes); proxy/websocket.py's watch_session, pinned by its unit tests.
    expired_socket = record.kind == "ws" and outcome == "closed" and record.detail.startswith("CLOSE 1013")
    if fault.kind == PROVIDER:
        return gateway or signing or expired_socket
    if fault.kind == UPSTREAM:
        return record.upstream == "tcp" and (gateway or cut)
    if fault.kind == REDIS:
        return outcome == "status:503" or signing or expired_socket
    if fault.kind == WORKER:
        return cut or (signing and record.outcome.startswith("error:"))
    if fault.kind == RELOAD:
        return record.kind == "ws" and record.outcome == "closed" and record.detail.startswith("CLOSE 1001")
    return False


def is_failure(record: Record) -> bool:
    if record.kind == "hostile":
        return record.outcome.startswith("status:5")
    return record.outcome not in ("ok", "closed_after_sign_out")


def phase_of(record: Record, faults: list[Fault]) -> str:
    for fault in faults:
        if fault.start <= record.start <= fault.end:
            return f"during {fault.name}"
    for fault in faults:
        if fault.end < record.start <= fault.end + AFTER:
            return f"after {fault.name}"
    return "steady"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(load: Load, faults: list[Fault], grants: dict[str, int], records: bool = False) -> dict[str, Any]:
    """Every figure of the soak as one JSON-able dict; ``goals`` holds the four that must be zero."""
    unexplained: list[Record] = []
    by_fault: dict[str, Counter[str]] = defaultdict(Counter)
    last_failure: dict[str, float] = {}
    for record in load.records:
        if not is_failure(record):
            continue
        causes = [fault for fault in faults if explains(fault, record)]
        # When faults follow closely, a failure during one is not put down to the grace time of the last.
        active = [f for f in causes if record.start <= f.end and record.end >= f.start]
        causes = active or causes
        for fault in causes:
            by_fault[fault.name][f"{record.kind} {record.outcome}"] += 1
            last_failure[fault.name] = max(last_failure.get(fault.name, 0.0), record.start)
        if not causes:
            unexplained.append(record)
    lost = [r for r in load.records if r.outcome == "session_lost"]
    # A worker killed while it held a refresh grant takes the rotated refresh token with it: the user's next
    # request spends the old one, the provider refuses it (reuse), the user signs in again. Nothing in
    # authproxy can get that token back (a limit with rotating refresh tokens, written up in issue 19's soak
    # notes); such a loss is counted apart when it follows the kill within GRACE + AFTER seconds and that
    # user had a request or stream cut by it.
    killed = [f for f in faults if f.kind == WORKER]
    cut_by_kill = {(f.name, r.user) for f in killed for r in load.records
                   if r.outcome.startswith(CUT) and explains(f, r)}
    lost_to_kill = [r for r in lost if any(f.start <= r.start <= f.end + GRACE + AFTER
                                           and (f.name, r.user) in cut_by_kill for f in killed)]
    lost = [r for r in lost if r not in lost_to_kill]
    unexpected_5xx = [r for r in unexplained if r.outcome.startswith("status:5")]
    ws_wrong = [r for r in load.ws_closed_early if not any(explains(f, r) for f in faults)]
    ws_reload = [r for r in load.ws_closed_early if any(f.kind == RELOAD and explains(f, r) for f in faults)]
    ws_expired = [r for r in load.ws_closed_early if r.detail.startswith("CLOSE 1013") and r not in ws_wrong]
    phases: dict[str, dict[str, Any]] = {}
    grouped: dict[str, list[Record]] = defaultdict(list)
    for record in load.records:
        grouped[phase_of(record, faults)].append(record)
    for name, records in grouped.items():
        quick = [r.end - r.start for r in records if r.kind in ("page", "api")]
        phases[name] = {"requests": len(records),
                        "outcomes": dict(Counter(f"{r.kind} {r.outcome}" for r in records).most_common()),
                        "p50_ms": round(percentile(quick, 0.5) * 1000, 1),
                        "p99_ms": round(percentile(quick, 0.99) * 1000, 1)}
    return {
        "goals": {"sessions_lost": len(lost), "unexpected_5xx": len(unexpected_5xx),
                  "refresh_grants_refused": max(0, grants.get("refresh_refused", 0) - len(lost_to_kill)),
                  "websockets_closed_wrongly": len(ws_wrong), "websockets_left_open": load.ws_left_open},
        "requests": len(load.records),
        "outcomes": dict(Counter(f"{r.kind} {r.outcome}" for r in load.records).most_common()),
        "grants": grants,
        "sessions_lost_to_a_killed_worker": len(lost_to_kill),
        "faults": [{**asdict(f), "start": round(f.start, 1), "end": round(f.end, 1),
                    "explained": dict(by_fault.get(f.name, {})),
                    "recovered_after_s": round(max(0.0, last_failure.get(f.name, f.end) - f.end), 2)}
                   for f in faults],
        "phases": phases,
        "websockets": {"opened": sum(1 for r in load.records if r.kind == "ws"),
                       "closed_by_proxy_after_sign_out": len(load.ws_after_end),
                       "closed_by_reload_1001": len(ws_reload),
                       "open_after_a_sign_out_answered_5xx": load.ws_open_after_failed_sign_out,
                       "closed_1013_at_expiry_during_outage": len(ws_expired),
                       "closed_by_other_faults": len(load.ws_closed_early) - len(ws_wrong) - len(ws_reload)
                       - len(ws_expired),
                       "close_after_sign_out_max_s": round(max(load.ws_after_end, default=0.0), 2)},
        "unexplained_failures": [asdict(r) for r in unexplained[:50]],
        "unexplained_failure_count": len(unexplained),
        "sessions_lost_detail": [asdict(r) for r in (lost + lost_to_kill)[:50]],
        "websockets_closed_wrongly_detail": [asdict(r) for r in ws_wrong[:50]],
        **({"records": [asdict(r) for r in load.records]} if records else {}),
    }
