"""OpenTelemetry tracing (issue 18), through the real provider and an echo upstream, exported over
OTLP/HTTP to a receiver the test starts (tests/support/otlp.py).

A sign-in is a ``GET /oauth2/callback`` span with the code exchange under it; a proxied request a
``GET proxied`` span with the ``upstream`` call under it, whose context the app receives as
``traceparent``; a refresh is its own span with its outcome; the access log names the trace.
"""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.support.otlp import otlp_receiver
from tests.support.timing import OffsetClock, eventually

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html"}


def tracing(url: str, **more) -> dict:
    return {"enabled": True, "endpoint": url, "export_interval": "0.1s", "service_name": "authproxy-test", **more}


async def test_sign_in_and_a_proxied_request_are_traced_and_the_app_gets_the_context(stack_factory,
                                                                                   browser_session, caplog):
    caplog.set_level(logging.INFO, logger="authproxy.access")
    async with otlp_receiver() as receiver:
        stack = await stack_factory(tracing=tracing(receiver.url))
        assert (await login_via_http(browser_session, stack.url + "/")).status == 200
        (callback,) = await receiver.wait_for("GET /oauth2/callback")
        (exchange,) = await receiver.wait_for("provider token exchange")
        assert exchange.trace_id == callback.trace_id and exchange.parent_span_id == callback.span_id
        assert exchange.kind == "client" and exchange.attributes["authproxy.outcome"] == "ok"
        assert exchange.attributes["authproxy.grant"] == "authorization_code"
        assert callback.kind == "server" and callback.service == "authproxy-test"
        assert callback.attributes["http.response.status_code"] in (200, 302)

        before = len(receiver.named("GET proxied"))
        async with browser_session.get(stack.url + "/traced?x=1", headers=HTML) as resp:
            assert resp.status == 200
            record = json.loads(await resp.text())
        (traceparent,) = header_values(record, "traceparent")
        version, trace_id, parent_id, flags = traceparent.split("-")
        spans = await receiver.wait_for("GET proxied", before + 1)
        server = next(s for s in spans if s.trace_id == trace_id)
        (upstream,) = [s for s in receiver.named("upstream") if s.trace_id == trace_id]
        assert upstream.span_id == parent_id and upstream.parent_span_id == server.span_id
        assert upstream.attributes["http.response.status_code"] == 200
        assert server.attributes["url.path"] == "/traced" and "x=1" not in json.dumps(server.attributes)
        assert any(f"trace={trace_id}" in r.getMessage() for r in caplog.records if "/traced" in r.getMessage())


async def test_a_clients_traceparent_is_not_continued_and_never_reaches_the_app(stack_factory, browser_session):
    """From a peer that is not a trusted proxy, the client's trace context is replaced: a client must not
    choose the trace our spans join, and the app must get exactly one traceparent, ours."""
    forged = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    async with otlp_receiver() as receiver:
        stack = await stack_factory(tracing=tracing(receiver.url))
        await login_via_http(browser_session, stack.url + "/")
        async with browser_session.get(stack.url + "/x", headers={**HTML, "traceparent": forged,
                                                                  "tracestate": "evil=1"}) as resp:
            record = json.loads(await resp.text())
        (traceparent,) = header_values(record, "traceparent")
        assert traceparent != forged and "ab" * 16 not in traceparent
        assert header_values(record, "tracestate") == []
        await receiver.wait_for("upstream", 1)
        assert all(s.trace_id != "ab" * 16 for s in receiver.spans)


async def test_a_trusted_proxys_traceparent_is_continued(stack_factory, browser_session):
    parent_trace = "12" * 16
    async with otlp_receiver() as receiver:
        stack = await stack_factory(tracing=tracing(receiver.url), trusted_proxies=["127.0.0.1/32"])
        await login_via_http(browser_session, stack.url + "/")
        async with browser_session.get(stack.url + "/x", headers={
                **HTML, "traceparent": f"00-{parent_trace}-{'34' * 8}-01"}) as resp:
            record = json.loads(await resp.text())
        (traceparent,) = header_values(record, "traceparent")
        assert traceparent.split("-")[1] == parent_trace
        await eventually(lambda: [s for s in receiver.named("GET proxied")
                                  if s.trace_id == parent_trace and s.parent_span_id == "34" * 8])


async def test_a_refresh_grant_is_a_span_with_its_outcome(stack_factory, browser_session):
    clock = OffsetClock()
    async with otlp_receiver() as receiver:
        stack = await stack_factory(tracing=tracing(receiver.url), clock=clock)
        await login_via_http(browser_session, stack.url + "/")
        clock.advance(3 * 3600)                                    # the access token has expired
        async with browser_session.get(stack.url + "/after", headers=HTML) as resp:
            assert resp.status == 200
        (grant,) = await receiver.wait_for("provider refresh")
        assert grant.attributes["authproxy.grant"] == "refresh_token"
        assert grant.attributes["authproxy.outcome"] == "ok"
        assert stack.idp.count_grants("refresh_token") == 1


async def test_tracing_off_adds_nothing(stack, browser_session):
    from proxy.tracing import TRACING
    assert TRACING not in stack.proxy.app
    assert len(stack.proxy.app.middlewares) == 1                 # the error boundary only
    await login_via_http(browser_session, stack.url + "/")
    async with browser_session.get(stack.url + "/x", headers={**HTML, "traceparent": "00-" + "ab" * 16
                                                              + "-" + "cd" * 8 + "-01"}) as resp:
        record = json.loads(await resp.text())
    assert header_values(record, "traceparent") == ["00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"]   # passed as is
