"""How a WebSocket ended is what its access-log line and ``authproxy_requests_total`` say: 101, the close
code and the side that closed — never a 500 for a socket that ended normally (issue 18).

Each way a socket ends, through the in-process stack (real oidc-provider, a real WebSocket app): the client
closing 1000, the app closing 1000, the client vanishing without a close frame, and a sign-out (4401).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from proxy.metrics import METRICS
from proxy.websocket import SESSION_ENDED, SOCKETS
from tests.integration.test_observability import metric
from tests.integration.test_websocket import WsApp, expect_close, signed_in, start_ws_app, wait_until, ws_url

pytestmark = pytest.mark.integration


@pytest.fixture
async def ws_app() -> AsyncIterator[WsApp]:
    app = await start_ws_app()
    yield app
    await app.runner.cleanup()


def socket_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The fields of the access-log lines for WebSocket requests (path /ws)."""
    return [r.fields for r in records                                   # type: ignore[attr-defined]
            if r.name == "authproxy.access" and r.fields.get("path") == "/ws"]  # type: ignore[attr-defined]


async def one_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    await wait_until(lambda: socket_lines(caplog.records))
    (line,) = socket_lines(caplog.records)
    return line


def counted(stack, status_class: str) -> float:
    text = generate_latest(stack.proxy.app[METRICS].registry).decode()
    return metric(text, "authproxy_requests_total", status_class=status_class)


def closes(stack, **labels: str) -> float:
    text = generate_latest(stack.proxy.app[METRICS].registry).decode()
    return metric(text, "authproxy_websocket_closes_total", **labels)


@pytest.fixture
async def signed_in_stack(stack_factory, ws_app, browser_session, caplog):
    caplog.set_level(logging.INFO, logger="authproxy.access")
    stack = await stack_factory(upstreams=[{"path": "/", "url": ws_app.url}])
    cookie = await signed_in(stack, browser_session)
    caplog.clear()
    return stack, cookie


def assert_counted_as_101(stack) -> None:
    assert counted(stack, "1xx") == 1
    assert counted(stack, "5xx") == 0


async def test_a_client_closing_1000_is_a_101_closed_by_the_client(signed_in_stack, caplog):
    stack, cookie = signed_in_stack
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
            await ws.send_str("hi")
            assert (await ws.receive()).data == "hi"
            await ws.close(code=1000, message=b"done")
    line = await one_line(caplog)
    assert (line["status"], line["ws_close"], line["ws_closed_by"]) == (101, 1000, "client")
    assert line["user"] == "alice" and line["duration_ms"] > 0
    assert_counted_as_101(stack)
    assert closes(stack, closed_by="client", code="1000") == 1


async def test_the_app_closing_1000_is_a_101_closed_by_the_upstream(signed_in_stack, caplog):
    stack, cookie = signed_in_stack
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
            await ws.send_str("close 1000 finished")
            assert await expect_close(ws, 5) == (1000, "finished")
    line = await one_line(caplog)
    assert (line["status"], line["ws_close"], line["ws_closed_by"]) == (101, 1000, "upstream")
    assert_counted_as_101(stack)
    assert closes(stack, closed_by="upstream", code="1000") == 1


async def test_a_client_that_vanishes_is_a_101_with_1006_from_the_client(signed_in_stack, ws_app, caplog):
    """No close frame, the TCP connection just gone: RFC 6455 §7.1.5 calls that 1006."""
    stack, cookie = signed_in_stack
    port = int(stack.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Cookie: " + cookie.encode() + b"\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 101")
    await wait_until(lambda: len(stack.proxy.app[SOCKETS]) == 1)
    raw = writer.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))     # close with a RST
    writer.transport.abort()
    line = await one_line(caplog)
    assert (line["status"], line["ws_close"], line["ws_closed_by"]) == (101, 1006, "client")
    assert_counted_as_101(stack)
    assert closes(stack, closed_by="client", code="1006") == 1
    await wait_until(lambda: ws_app.closes)
    assert ws_app.closes == [(1001, "client went away")]          # the app is told the client went away


async def test_a_sign_out_is_a_101_closed_by_the_proxy_with_4401(signed_in_stack, caplog):
    stack, cookie = signed_in_stack
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(ws_url(stack), headers={"Cookie": cookie}) as ws:
            async with client.get(stack.url + "/oauth2/sign_out", headers={"Cookie": cookie},
                                  allow_redirects=False) as resp:
                assert resp.status == 302
            assert await expect_close(ws, 5) == (SESSION_ENDED, "signed out")
    line = await one_line(caplog)
    assert (line["status"], line["ws_close"], line["ws_closed_by"]) == (101, SESSION_ENDED, "proxy")
    assert_counted_as_101(stack)
    assert closes(stack, closed_by="proxy", code="4401") == 1


async def test_a_refused_handshake_is_still_counted_by_its_status(signed_in_stack, caplog):
    """Not every upgrade is a 101: a bad Origin is a 403 line, with no close code."""
    stack, cookie = signed_in_stack
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect(ws_url(stack), headers={"Cookie": cookie}, origin="https://evil.example")
    line = await one_line(caplog)
    assert line["status"] == 403 and "ws_close" not in line
    assert counted(stack, "4xx") == 1 and counted(stack, "1xx") == 0
