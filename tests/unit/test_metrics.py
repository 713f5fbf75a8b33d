"""Tests for proxy.metrics: what each call counts, the bound on failure reasons, the auth-event log and
the exposition endpoint."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import (MAX_FAILURE_REASONS, METRICS, MULTIPROC_ENV, LoopValue, Metrics, SharedMetrics,
                           close_code_label, handle_metrics, status_class, worker_value_class)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_app_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.logged_out("alice")
    assert sample(one, "authproxy_logouts_total") == 1
    assert sample(two, "authproxy_logouts_total") == 0


@pytest.mark.parametrize(("status", "label"), [(200, "2xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (599, "5xx")])
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


def test_answered_counts_by_upstream_and_status_class_and_times_each() -> None:
    metrics = Metrics()
    metrics.answered("app", 200, 0.003)
    metrics.answered("app", 201, 0.2)
    metrics.answered("app", 503, 0.01)
    metrics.answered("api", 200, 0.001)
    assert sample(metrics, "authproxy_requests_total", upstream="app", status_class="2xx") == 2
    assert sample(metrics, "authproxy_requests_total", upstream="app", status_class="5xx") == 1
    assert sample(metrics, "authproxy_requests_total", upstream="api", status_class="2xx") == 1
    assert sample(metrics, "authproxy_request_duration_seconds_count", upstream="app") == 3
    assert sample(metrics, "authproxy_request_duration_seconds_sum", upstream="app") == pytest.approx(0.213)
    # 0.003 and 0.01 are at most 0.01; 0.2 is not.
    assert sample(metrics, "authproxy_request_duration_seconds_bucket", upstream="app", le="0.01") == 2


def test_upstream_answered_times_the_response_head() -> None:
    metrics = Metrics()
    metrics.upstream_answered("app", 0.5)
    metrics.upstream_answered("app", 1.5)
    assert sample(metrics, "authproxy_upstream_duration_seconds_count", upstream="app") == 2
    assert sample(metrics, "authproxy_upstream_duration_seconds_sum", upstream="app") == 2.0
    assert sample(metrics, "authproxy_upstream_duration_seconds_bucket", upstream="app", le="1.0") == 1


def test_logins_by_stage_and_reason() -> None:
    metrics = Metrics()
    metrics.login_started()
    metrics.login_started()
    metrics.login_completed("alice", "rid-1")
    metrics.login_failed("state_mismatch", "rid-2")
    assert sample(metrics, "authproxy_logins_total", stage="started", reason="") == 2
    assert sample(metrics, "authproxy_logins_total", stage="completed", reason="") == 1
    assert sample(metrics, "authproxy_logins_total", stage="failed", reason="state_mismatch") == 1


def test_failure_reasons_are_bounded_so_a_provider_cannot_grow_the_registry() -> None:
    metrics = Metrics()
    for i in range(MAX_FAILURE_REASONS + 10):
        metrics.login_failed(f"provider_error_{i}", "rid")
    metrics.login_failed("provider_error_0", "rid")                 # a known reason keeps its own series
    reasons = {s.labels["reason"] for family in text_string_to_metric_families(_exposition(metrics))
               for s in family.samples if s.name == "authproxy_logins_total" and s.labels["stage"] == "failed"}
    assert len(reasons) == MAX_FAILURE_REASONS + 1 and "other" in reasons
    assert sample(metrics, "authproxy_logins_total", stage="failed", reason="other") == 10
    assert sample(metrics, "authproxy_logins_total", stage="failed", reason="provider_error_0") == 2


def test_refreshes_logouts_denials_and_host_ends() -> None:
    metrics = Metrics()
    metrics.refreshed("ok", "alice")
    metrics.refreshed("ok", "bob")
    metrics.refreshed("refused", "alice", "invalid_grant")
    metrics.refused("alice", "not in group admins", "rid")
    metrics.host_ends.inc()
    metrics.websockets.inc()
    assert sample(metrics, "authproxy_refreshes_total", outcome="ok") == 2
    assert sample(metrics, "authproxy_refreshes_total", outcome="refused") == 1
    assert sample(metrics, "authproxy_denied_total") == 1
    assert sample(metrics, "authproxy_host_ends_received_total") == 1
    assert sample(metrics, "authproxy_websockets_active") == 1


def test_auth_events_are_logged_with_fields_and_never_a_token(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="authproxy.events"):
        metrics.login_completed("alice", "rid-1")
        metrics.refreshed("refused", "alice", "invalid_grant")
        metrics.refused("bob", "no group", "rid-2")
        metrics.logged_out("alice")
    events = [(r.getMessage(), r.fields) for r in caplog.records]                    # type: ignore[attr-defined]
    assert events == [
        ("login: sub=alice", {"event": "login", "sub": "alice", "request_id": "rid-1"}),
        ("refresh refused: sub=alice (invalid_grant)",
         {"event": "refresh", "outcome": "refused", "sub": "alice", "reason": "invalid_grant"}),
        ("denied: sub=bob (no group)", {"event": "denied", "sub": "bob", "reason": "no group", "request_id": "rid-2"}),
        ("logout: sub=alice", {"event": "logout", "sub": "alice"}),
    ]


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


async def test_the_metrics_endpoint_serves_the_text_format_uncached() -> None:
    app = web.Application()
    app[METRICS] = metrics = Metrics()
    metrics.answered("app", 200, 0.01)
    response = await handle_metrics(make_mocked_request("GET", "/metrics", app=app))
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert response.body is not None
    body = bytes(response.body).decode()          # type: ignore[arg-type]
    assert 'authproxy_requests_total{status_class="2xx",upstream="app"} 1.0' in body


@pytest.mark.parametrize(("code", "label"), [(1000, "1000"), (1006, "1006"), (1015, "1015"), (4401, "4401"),
                                             (4000, "4xxx"), (3999, "3xxx"), (0, "other"), (1016, "other"),
                                             (65535, "other")])
def test_close_codes_get_a_bounded_label(code: int, label: str) -> None:
    """A peer picks any code from 3000 to 4999: those cannot each get a series."""
    assert close_code_label(code) == label


def test_websocket_closes_by_side_and_code() -> None:
    metrics = Metrics()
    metrics.websocket_closed("client", 1000)
    metrics.websocket_closed("client", 4123)
    metrics.websocket_closed("client", 4567)
    metrics.websocket_closed("proxy", 4401)
    assert sample(metrics, "authproxy_websocket_closes_total", closed_by="client", code="1000") == 1
    assert sample(metrics, "authproxy_websocket_closes_total", closed_by="client", code="4xxx") == 2
    assert sample(metrics, "authproxy_websocket_closes_total", closed_by="proxy", code="4401") == 1


@pytest.fixture
def shared(monkeypatch) -> Iterator[SharedMetrics]:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    made = SharedMetrics()
    yield made
    made.remove()


def test_workers_values_are_summed_and_a_dead_workers_live_gauge_dropped(shared, monkeypatch) -> None:
    """Two workers of ``workers: N`` in one test process: each writes its own file in the shared
    directory; either one's exposition shows both summed; a dead worker keeps its counts, not its sockets."""
    workers, classes = [], []
    for pid, answers, sockets in ((101, [200], 1), (102, [200, 502], 2)):
        # One value class per process in production; here each "worker" does its work while its own is in use
        # (labelled values are made on first use).
        classes.append(worker_value_class(shared.directory, pid))
        monkeypatch.setattr(values, "ValueClass", classes[-1])
        workers.append(metrics := Metrics(shared.directory))
        for status in answers:
            metrics.answered("/", status, 0.01)
        metrics.websockets.inc(sockets)
    one = workers[0]
    for metrics in workers:
        text = metrics.exposition().decode()
        assert metric_value(text, "authproxy_requests_total", status_class="2xx") == 2
        assert metric_value(text, "authproxy_requests_total", status_class="5xx") == 1
        assert metric_value(text, "authproxy_request_duration_seconds_count") == 3
        assert metric_value(text, "authproxy_websockets_active") == 3
    assert sorted(os.listdir(shared.directory)) == [f"{kind}_{pid}.db" for kind in ("counter", "gauge_livesum",
                                                                                   "histogram") for pid in (101, 102)]
    shared.worker_exited(102)
    text = one.exposition().decode()
    assert metric_value(text, "authproxy_websockets_active") == 1            # the dead worker's sockets are gone
    assert metric_value(text, "authproxy_requests_total", status_class="2xx") == 2     # its counts are not
    for value_class in classes:
        value_class.close_files()                                            # type: ignore[attr-defined]


def test_the_supervisors_directory_is_private_named_for_the_workers_and_removed(shared) -> None:
    assert os.environ[MULTIPROC_ENV] == shared.directory
    assert os.stat(shared.directory).st_mode & 0o777 == 0o700
    shared.remove()
    assert MULTIPROC_ENV not in os.environ and not os.path.exists(shared.directory)


def test_one_process_keeps_in_memory_values_without_a_lock(monkeypatch) -> None:
    """A process of its own (``workers: 1``, or a worker without the supervisor's directory) counts in plain
    floats (``LoopValue``): every request's writes and the scrape that reads them run on its event loop."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)          # restored after the test
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    metrics = Metrics.for_worker()
    assert metrics.shared_dir is None and values.ValueClass is LoopValue
    for status in (200, 200, 503):
        metrics.answered("/", status, 0.0007)
    metrics.upstream_answered("/", 3.0)
    text = metrics.exposition().decode()
    assert metric_value(text, "authproxy_requests_total", status_class="2xx") == 2
    assert metric_value(text, "authproxy_requests_total", status_class="5xx") == 1
    assert metric_value(text, "authproxy_request_duration_seconds_bucket", le="0.0005") == 0
    assert metric_value(text, "authproxy_request_duration_seconds_bucket", le="0.001") == 3
    assert metric_value(text, "authproxy_request_duration_seconds_sum") == pytest.approx(0.0021)
    assert metric_value(text, "authproxy_upstream_duration_seconds_bucket", le="2.5") == 0
    assert metric_value(text, "authproxy_upstream_duration_seconds_bucket", le="5.0") == 1
    assert Metrics.for_process().registry is not metrics.registry and values.ValueClass is LoopValue


def metric_value(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_the_documented_metrics_are_exactly_the_ones_served() -> None:
    """docs/deployment.md's table names every metric /metrics serves, and nothing it does not serve
    (tests/integration/test_observability.py moves each one)."""
    table = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    documented = set(re.findall(r"^\| `(authproxy_[a-z_]+)` \|", table, re.MULTILINE))
    served = {family.name + ("_total" if family.type == "counter" else "") for family in Metrics().registry.collect()}
    assert documented == served
