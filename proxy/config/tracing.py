"""The ``tracing`` section: OpenTelemetry spans sent over OTLP/HTTP, off unless asked for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

from .base import _Model
from .values import Loc, PositiveDuration, _http_url


def _sdk_installed() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in (
        "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))


class TracingConfig(_Model):
    """OpenTelemetry tracing: a span for each request, the upstream call, the code exchange and each
    refresh grant, exported in batches over OTLP/HTTP by a background thread (never the event loop).
    Needs the ``tracing`` extra: ``pip install 'authproxy[tracing]'``."""

    enabled: bool = False
    endpoint: Annotated[str, _http_url("http://127.0.0.1:4318/v1/traces")] = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "authproxy"
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    headers: dict[str, str] = Field(default_factory=dict)
    export_interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 10.0
    # A request's ``traceparent`` is continued when it comes from ``trusted_proxies`` (an ingress that
    # traces); from anyone else only with this set: a client must not pick the trace our spans join.
    trust_incoming: bool = False

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.enabled and not _sdk_installed():
            yield ("enabled",), ("needs the OpenTelemetry SDK, which is not installed: pip install "
                                 "'authproxy[tracing]' (or set enabled: false)")
        for name in self.headers:
            if not name or any(c in name for c in " \t\r\n:"):
                yield ("headers", name), "is not a header name; write e.g. Authorization: Bearer <collector token>"
