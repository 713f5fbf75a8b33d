"""Prometheus metrics (text exposition format, via prometheus-client) and the auth-event log.

Each app has its own ``CollectorRegistry``, so several proxies in one process (tests, reloads)
never mix their numbers. Everything counted here is also an auth event in the log (``event``
field in JSON logs): login, refresh, logout, denied — with a reason, never with a token.

With ``workers: N`` a scrape reaches one worker, chosen by the kernel, and must still show the whole
host: prometheus-client's multiprocess mode. The supervisor makes a private directory
(``SharedMetrics``) and names it in ``PROMETHEUS_MULTIPROC_DIR`` before it forks; each worker keeps
its values in memory-mapped files there (``Metrics.for_worker``), and ``/metrics`` in any worker sums
every file. A worker that dies leaves its counters' file behind, so totals survive a restart; its
live gauges (``authproxy_websockets_active``, summed over live workers) are dropped when the
supervisor reaps it. Each value written is a store into the mapping (``worker_value_class``), as
cheap as one process's in-memory values; one process (``workers: 1``) keeps those.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

events_log = logging.getLogger("authproxy.events")

# Failed sign-ins are counted by reason, and a reason can come from the provider (its OAuth ``error``):
# at most this many distinct reasons get a series of their own, the rest count as "other", so a hostile
# or broken provider cannot grow the registry (and every scrape) without bound.
MAX_FAILURE_REASONS = 32
# Latency buckets in seconds: a proxy's own work is sub-millisecond, upstreams and providers slower.
# WebSocket close codes with a series of their own: RFC 6455 §7.4.1's and 4401 (``websocket.SESSION_ENDED``).
# An app or a client picks any other code from 3000 to 4999; those count as "3xxx" or "4xxx", so a peer
# cannot grow the registry.
_NAMED_CLOSE_CODES = frozenset({*range(1000, 1016), 4401})
# Where prometheus-client's multiprocess mode keeps each process's values (its own variable's name).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, shared_dir: str | None = None) -> None:
        """``shared_dir``: a worker of ``workers: N`` (see ``for_worker``); None for one process."""
        self.shared_dir = shared_dir
        self.registry = r = CollectorRegistry()
        self.requests = Counter("authproxy_requests", "Requests answered, by upstream and status class",
                                ["upstream", "status_class"], registry=r)
        self.request_seconds = Histogram("authproxy_request_duration_seconds",
                                         "Time from request to the response's end (a WebSocket: to its 101)",
                                         ["upstream"],
                                         buckets=_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("authproxy_upstream_duration_seconds",
                                          "Time the upstream took to answer with headers", ["upstream"],
                                          buckets=_BUCKETS, registry=r)
        self.logins = Counter("authproxy_logins", "Sign-ins by stage (started, completed, failed) and reason",
                              ["stage", "reason"], registry=r)
        self.refreshes = Counter("authproxy_refreshes", "Token refreshes by outcome", ["outcome"], registry=r)
        self.logouts = Counter("authproxy_logouts", "Sessions ended by sign-out", registry=r)
        self.host_ends = Counter("authproxy_host_ends_received", "Session ends received from the host's other "
                                 "workers (workers: N)", registry=r)
        self.denied = Counter("authproxy_denied", "Signed-in requests refused by authorization rules",
                              registry=r)
        self.websockets = Gauge("authproxy_websockets_active", "WebSocket connections open", registry=r,
                                multiprocess_mode="livesum")
        self.websocket_closes = Counter("authproxy_websocket_closes", "WebSockets ended, by the side that "
                                        "ended them and the close code (1006: gone without one)",
                                        ["closed_by", "code"], registry=r)
        self.provider_seconds = Histogram("authproxy_provider_request_duration_seconds",
                                          "Time of each call to the identity provider", ["step"],
                                          buckets=_BUCKETS, registry=r)

        # Label children by their values: ``labels()`` takes a lock and validates the values on every call.
        self._answered: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._upstream: dict[str, Any] = {}
        self._failure_reasons: set[str] = set()

    @classmethod
    def for_worker(cls) -> Metrics:
        """The metrics of a forked worker: in the supervisor's shared directory when it made one, else
        of this process alone. Call in the worker, after the fork and before any other ``Metrics``.

        prometheus-client picks where values live once, when it is imported (from the environment);
        the supervisor imported it before it made the directory, so the choice is made again here,
        for this process (``worker_value_class``)."""
        shared = os.environ.get(MULTIPROC_ENV)
        if shared is None:
            return cls.for_process()
        values.ValueClass = worker_value_class(shared, os.getpid())
        return cls(shared)

    @classmethod
    def for_process(cls) -> Metrics:
        """The metrics of a serving process that shares them with no other (``workers: 1``): its values are
        ``LoopValue``s, without a lock. Call before any other ``Metrics`` of the process is made."""
        values.ValueClass = LoopValue
        return cls()

    def exposition(self) -> bytes:
        """The text format: this process's registry, or, in a worker of ``workers: N``, every worker's
        values summed (gauges: over the live workers)."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        MultiProcessCollector(summed, path=self.shared_dir)          # type: ignore[no-untyped-call]
        return generate_latest(summed)

    def answered(self, upstream: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration. The label children are looked up once per
        (upstream, status class) and kept, which saves two ``labels()`` calls (lock, value checks,
        tuple building) per request: ~4 µs of ~150."""
        key = (upstream, status // 100)
        children = self._answered.get(key)
        if children is None:
            children = (self.requests.labels(upstream, status_class(status)), self.request_seconds.labels(upstream))
            self._answered[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_answered(self, upstream: str, seconds: float) -> None:
        """Record the time an upstream took to send its response head (label child kept per upstream)."""
        child = self._upstream.get(upstream)
        if child is None:
            child = self._upstream[upstream] = self.upstream_seconds.labels(upstream)
        child.observe(seconds)

    def websocket_closed(self, by: str, code: int) -> None:
        """Count a WebSocket's end: ``by`` is client, upstream or proxy; ``code`` as ``close_code_label``."""
        self.websocket_closes.labels(by, close_code_label(code)).inc()

    def event(self, event: str, message: str, **fields: Any) -> None:
        """Log an auth event with its fields; the caller counts it in the matching metric."""
        events_log.info(message, extra={"fields": {"event": event, **fields}})

    def login_started(self) -> None:
        self.logins.labels("started", "").inc()

    def _failure_label(self, reason: str) -> str:
        """``reason`` as a label value, or "other" once MAX_FAILURE_REASONS distinct ones are in use."""
        if reason not in self._failure_reasons:
            if len(self._failure_reasons) >= MAX_FAILURE_REASONS:
                return "other"
            self._failure_reasons.add(reason)
        return reason

    def login_completed(self, sub: str, request_id: str) -> None:
        self.logins.labels("completed", "").inc()
        self.event("login", f"login: sub={sub}", sub=sub, request_id=request_id)

    def login_failed(self, reason: str, request_id: str) -> None:
        self.logins.labels("failed", self._failure_label(reason)).inc()
        self.event("login_failed", f"login failed: {reason}", reason=reason, request_id=request_id)

    def refreshed(self, outcome: str, sub: str, reason: str = "") -> None:
        self.refreshes.labels(outcome).inc()
        self.event("refresh", f"refresh {outcome}: sub={sub}" + (f" ({reason})" if reason else ""),
                   outcome=outcome, sub=sub, reason=reason)

    def logged_out(self, sub: str) -> None:
        self.logouts.inc()
        self.event("logout", f"logout: sub={sub}", sub=sub)

    def refused(self, sub: str, reason: str, request_id: str) -> None:
        self.denied.inc()
        self.event("denied", f"denied: sub={sub} ({reason})", sub=sub, reason=reason, request_id=request_id)


METRICS = web.AppKey("authproxy_metrics", Metrics)


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def close_code_label(code: int) -> str:
    """A close code as a label value: the standard ones and 4401 as themselves, others by their thousand."""
    if code in _NAMED_CLOSE_CODES:
        return str(code)
    return f"{code // 1000}xxx" if 3000 <= code <= 4999 else "other"



class LoopValue:
    """prometheus-client's value for a serving process of its own: a float, without the library's lock.

    The library's ``MutexValue`` takes a lock on every write so that threads may share a metric. In a serving
    process only the event loop's thread writes and reads metrics (the access log's thread touches none), so
    a request's five writes (a counter, two histograms' sum and bucket) need none: 0.08 µs each instead of
    0.23 on the benchmark machine."""

    _multiprocess = False
    __slots__ = ("_exemplar", "_value")

    def __init__(self, typ: str, metric_name: str, name: str, labelnames: Sequence[str], labelvalues: Sequence[str],
                 help_text: str, **_kwargs: Any) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


def worker_value_class(directory: str, pid: int) -> type:
    """prometheus-client's value class for one worker of ``workers: N``: each value in a memory-mapped file
    in ``directory`` named by ``pid``, in the library's own format (``MultiProcessCollector`` sums them).

    The library's own class (``values.MultiProcessValue``) takes a lock and asks the kernel for the pid
    on every write, to notice a fork. A worker forks no more, and only its event loop's thread writes
    metrics, so this one only stores: it keeps a request's five writes as cheap as one process's
    in-memory values (about 4 µs; the library's took 7-12 µs on the benchmark machine)."""
    files: dict[str, Any] = {}                       # the library's MmapedDict, one per kind of value

    class WorkerValue:
        _multiprocess = True
        __slots__ = ("_file", "_key", "_value")

        def __init__(self, typ: str, metric_name: str, name: str, labelnames: Sequence[str],
                     labelvalues: Sequence[str], help_text: str, multiprocess_mode: str = "",
                     **_kwargs: Any) -> None:
            prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            file = files.get(prefix)
            if file is None:
                file = files[prefix] = MmapedDict(os.path.join(directory, f"{prefix}_{pid}.db"))  # type: ignore[no-untyped-call]
            self._file: Any = file
            self._key = mmap_key(metric_name, name, list(labelnames), list(labelvalues), help_text)
            self._value: float = file.read_value(self._key)[0]

        def inc(self, amount: float) -> None:
            self._value += amount
            self._file.write_value(self._key, self._value, 0.0)

        def set(self, value: float, timestamp: float | None = None) -> None:
            self._value = value
            self._file.write_value(self._key, value, timestamp or 0.0)

        def set_exemplar(self, _exemplar: object) -> None:
            return                                   # no exemplars in multiprocess mode (as the library's)

        def get(self) -> float:
            return self._value

        def get_exemplar(self) -> None:
            return None

        @staticmethod
        def close_files() -> None:
            """For tests; a worker's files stay open until it exits."""
            for file in files.values():
                file.close()
            files.clear()

    return WorkerValue


class SharedMetrics:
    """The supervisor's side of ``workers: N`` metrics: a private directory (0700, ``mkdtemp``) named in
    the environment the workers inherit, a dead worker's live gauges dropped, the directory removed at
    exit. Made before the first fork."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="authproxy-metrics-")
        os.environ[MULTIPROC_ENV] = self.directory

    def worker_exited(self, pid: int) -> None:
        """Its counters stay (totals survive a restart); its share of the live gauges goes."""
        mark_process_dead(pid, self.directory)                      # type: ignore[no-untyped-call]

    def remove(self) -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(self.directory, ignore_errors=True)
