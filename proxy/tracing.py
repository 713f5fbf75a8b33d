"""OpenTelemetry tracing: off unless ``tracing.enabled``, and then free of the event loop's time.

What is traced: each request (a SERVER span named after its route: ``GET /oauth2/callback``, or
``GET proxied`` for whatever goes to an app), the call to the app inside it (a CLIENT span, whose
context the app receives as W3C ``traceparent``), and each grant at the provider's token endpoint —
the code exchange of a sign-in and every refresh — with its outcome (``ok``, ``refused``,
``unavailable``). A refresh shared by many requests is one span, a child of the request that started it.

How: ``opentelemetry-sdk`` (the ``tracing`` extra) with a ``BatchSpanProcessor`` and the OTLP/HTTP
exporter: spans are queued in memory and sent by the SDK's own thread, never on the event loop; a
collector that is down costs dropped spans, not latency. Each app (a worker, a reload) has its own
``TracerProvider``, made after the fork and shut down (flushed) with the app.

Which tracer a piece of code uses travels in a context variable that ``middleware`` sets for the
request: a task started by the request (a refresh grant, a WebSocket's watcher) inherits it, and code
outside any traced request (or with tracing off) gets a shared no-op span — one ``ContextVar.get``.

A client's ``traceparent`` is continued only from ``trusted_proxies`` (or from anyone with
``tracing.trust_incoming``): a client must not choose the trace the proxy's spans join. The one sent
to the app is always the proxy's own: any the client sent is replaced.

The access log gains ``trace=<trace id>`` so that a slow request in the log can be found in the
tracing backend.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

if TYPE_CHECKING:
    from .config import Config, TracingConfig

log = logging.getLogger("authproxy.tracing")

TRACE_ID = web.RequestKey("authproxy_trace_id", str)
PROPAGATED = ("traceparent", "tracestate")


class _NoSpan:
    """What ``span`` yields when nothing is traced: every call a span takes, doing nothing."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def record_exception(self, exc: BaseException) -> None:
        return None


_NO_SPAN = contextlib.nullcontext(_NoSpan())
_CURRENT: ContextVar[Tracing | None] = ContextVar("authproxy_tracing", default=None)


class Tracing:
    """One app's tracer provider, tracer and propagator (built only when tracing is on)."""

    def __init__(self, config: TracingConfig, *, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers),
                                        timeout=config.timeout)
        self.config = config
        self.provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter, schedule_delay_millis=int(config.export_interval * 1000),
            export_timeout_millis=int(config.timeout * 1000)))
        self.tracer = self.provider.get_tracer("authproxy")
        self.propagator = TraceContextTextMapPropagator()
        self.SpanKind, self.Status, self.StatusCode = SpanKind, Status, StatusCode

    def flush(self, timeout: float = 5.0) -> bool:
        return bool(self.provider.force_flush(int(timeout * 1000)))

    def shutdown(self) -> None:
        self.provider.shutdown()


TRACING = web.AppKey("authproxy_tracing", Tracing)


def span(name: str, *, client: bool = False, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span named ``name`` under the current one, if this request is traced; else a no-op span.
    The span yielded takes ``set_attribute`` either way."""
    tracing = _CURRENT.get()
    if tracing is None:
        return _NO_SPAN
    kind = tracing.SpanKind.CLIENT if client else tracing.SpanKind.INTERNAL
    return tracing.tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current span's ``traceparent`` (and ``tracestate``) in ``headers`` for the app, replacing
    any the client sent; nothing when this request is not traced."""
    tracing = _CURRENT.get()
    if tracing is None:
        return
    for name in PROPAGATED:
        headers.pop(name, None)
    tracing.propagator.inject(headers)


def inject_items(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``inject`` for a header list (the lean HTTP/1.1 client's form)."""
    if _CURRENT.get() is None:
        return items
    carrier: dict[str, str] = {}
    inject(carrier)
    return [(k, v) for k, v in items if k.lower() not in PROPAGATED] + list(carrier.items())


_OWN = ("/oauth2/", "/ping", "/ready", "/metrics")


def _route_name(request: web.Request) -> str:
    """``GET /oauth2/callback`` for the proxy's own routes, ``GET proxied`` for the apps' (a span name
    must not carry a path a client chose: unbounded names break a tracing backend's grouping)."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return f"{request.method} {canonical if canonical.startswith(_OWN) else 'proxied'}"


@contextlib.contextmanager
def _current(tracing: Tracing) -> Iterator[None]:
    token = _CURRENT.set(tracing)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def middleware(config: Config) -> Middleware:
    """The outermost middleware when tracing is on: the request's SERVER span, around everything else."""
    from .upstream.forward import FORWARDER
    trust_all = config.tracing.trust_incoming

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        tracing = request.app.get(TRACING)
        if tracing is None:
            return await handler(request)
        parent = None
        if "traceparent" in request.headers and (
                trust_all or request.app[FORWARDER].headers.is_trusted(request.remote or "")):
            parent = tracing.propagator.extract({k.lower(): v for k, v in request.headers.items()
                                                 if k.lower() in PROPAGATED})
        with _current(tracing), tracing.tracer.start_as_current_span(
                _route_name(request), context=parent, kind=tracing.SpanKind.SERVER,
                attributes={"http.request.method": request.method, "url.path": request.path,
                            "url.scheme": config.public_url.split(":", 1)[0]}) as current:
            context = current.get_span_context()
            if context.is_valid:
                request[TRACE_ID] = format(context.trace_id, "032x")
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                current.set_attribute("http.response.status_code", exc.status)
                raise
            current.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                current.set_status(tracing.Status(tracing.StatusCode.ERROR))
            return response

    return traced


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the app's tracer provider, flushed and shut down with the app (in a thread: the
    last export may wait on the collector)."""
    import asyncio

    from .context import CONFIG
    config = app[CONFIG].tracing
    tracing = Tracing(config)
    app[TRACING] = tracing
    log.info("tracing on: OTLP/HTTP to %s, sampling %g", config.endpoint, config.sample_ratio)
    yield
    await asyncio.get_running_loop().run_in_executor(None, tracing.shutdown)
