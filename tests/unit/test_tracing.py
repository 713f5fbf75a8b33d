"""proxy/tracing.py without a collector: what tracing off costs (nothing but a ContextVar read), and
that the context the app gets replaces the client's."""

from __future__ import annotations

import timeit

from proxy.config import TracingConfig
from proxy.tracing import _CURRENT, Tracing, _current, inject, inject_items, span


class Collected:
    """An exporter that keeps what it is given (the SDK's in-memory exporter, without the import)."""

    def __init__(self) -> None:
        self.spans: list = []

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def test_off_a_span_is_a_shared_no_op_and_nothing_is_injected():
    assert _CURRENT.get() is None
    with span("upstream", client=True, a=1) as current:
        current.set_attribute("x", 1)              # takes what a real span takes
    headers = {"traceparent": "client's"}
    inject(headers)
    assert headers == {"traceparent": "client's"}
    items = [("traceparent", "client's")]
    assert inject_items(items) is items
    cost = min(timeit.repeat(lambda: span("x"), number=10_000, repeat=3)) / 10_000
    assert cost < 20e-6                            # a ContextVar read: well under a microsecond on any machine


def test_on_spans_nest_and_the_app_gets_ours_only():
    exporter = Collected()
    tracing = Tracing(TracingConfig(enabled=True, export_interval=0.01), exporter=exporter)
    try:
        with _current(tracing), tracing.tracer.start_as_current_span("request") as outer:
            with span("upstream", client=True, **{"server.address": "http://app"}) as inner:
                headers = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "tracestate": "evil=1"}
                inject(headers)
                items = inject_items([("TraceParent", "forged"), ("Host", "app")])
                inner_id = format(inner.get_span_context().span_id, "016x")
            trace_id = format(outer.get_span_context().trace_id, "032x")
        assert headers["traceparent"].startswith(f"00-{trace_id}-{inner_id}-") and "tracestate" not in headers
        assert [k for k, _ in items].count("traceparent") == 1 and ("TraceParent", "forged") not in items
        assert tracing.flush()
        names = {s.name: s for s in exporter.spans}
        assert names["upstream"].parent.span_id == names["request"].context.span_id
        assert names["upstream"].attributes["server.address"] == "http://app"
    finally:
        tracing.shutdown()
    assert _CURRENT.get() is None                  # the context variable is reset after the request


def test_a_bad_header_name_or_missing_sdk_stops_start_up(monkeypatch):
    import pytest

    from proxy.config import tracing as module
    with pytest.raises(ValueError, match="not a header name"):
        TracingConfig(headers={"bad name": "x"})
    monkeypatch.setattr(module, "_sdk_installed", lambda: False)
    with pytest.raises(ValueError, match=r"authproxy\[tracing\]"):
        TracingConfig(enabled=True)
    assert TracingConfig(enabled=False).enabled is False      # off needs no SDK
