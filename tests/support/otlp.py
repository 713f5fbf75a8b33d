"""A small OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) for the tracing tests.

It decodes each export with the OpenTelemetry protocol's own message classes (``opentelemetry-proto``,
installed with the exporter) and keeps every span as a plain ``ReceivedSpan``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.ports import free_port
from tests.support.timing import eventually

KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    attributes: dict[str, Any]
    service: str


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value")) if any_value.WhichOneof("value") else None


@dataclass
class Receiver:
    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    content_types: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                              ExportTraceServiceResponse)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.exports += 1
        self.content_types.append(request.headers.get("Content-Type", ""))
        for resource_spans in message.resource_spans:
            service = next((_value(a.value) for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(ReceivedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), kind=KINDS.get(span.kind, str(span.kind)),
                        attributes={a.key: _value(a.value) for a in span.attributes}, service=service))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 15.0) -> list[ReceivedSpan]:
        await eventually(lambda: len(self.named(name)) >= count, timeout=timeout, what=f"{count} span(s) {name!r}")
        return self.named(name)


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/v1/traces", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        yield receiver
    finally:
        await runner.cleanup()
