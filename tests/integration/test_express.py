"""The express lane (proxy/express.py): what it answers is what aiohttp's path answers, byte for byte
but the date and the request id; what it declines reaches aiohttp whole; a connection's order, limits,
shutdown and session ends hold for what it serves.

Two proxies in front of one rich upstream, one with ``limits.express: false``: the same signed-in
browser (one cookie secret) asks both. ``served`` is the lane's count of requests it answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import pytest

from proxy.connections import LimitedServer
from proxy.session import STORE
from tests.support.browserless import login_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET
from tests.support.ports import free_port
from tests.support.proxyrun import RunningProxy, config_dict, start_proxy

pytestmark = pytest.mark.integration

VOLATILE = {"date", "x-request-id"}


def lane_of(proxy: RunningProxy):
    server = proxy.runner.server
    assert isinstance(server, LimitedServer)
    return server.lane


@pytest.fixture
async def pair(stack_factory, rich, browser_session):
    """(express proxy, aiohttp-only proxy, the session's Cookie header) in front of the rich upstream."""
    upstreams = [{"path": "/", "url": rich.url},
                 {"path": "/quick", "url": rich.url, "timeout": "1s", "strip_prefix": True},
                 {"path": "/dead", "url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "2s"}]
    stack = await stack_factory(upstreams=upstreams, limits={"keepalive_timeout": "2s"})
    await login_via_http(browser_session, stack.url + "/")
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser_session.cookie_jar)
    port = free_port()
    data = config_dict(port=port, issuer=stack.proxy.config.provider.issuer, upstream_url=rich.url,
                       client_id=CLIENT_ID, client_secret=CLIENT_SECRET, upstreams=upstreams,
                       limits={"keepalive_timeout": "2s", "express": False})
    plain = await start_proxy(data)
    assert lane_of(stack.proxy) is not None and lane_of(plain) is None
    yield stack.proxy, plain, cookie
    await plain.close()


async def exchange(url: str, raw: bytes, answers: int = 1, timeout: float = 10) -> list[tuple[str, dict, bytes]]:
    """Send ``raw`` on one new connection and read ``answers`` responses (Content-Length framed or to EOF)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        return [await asyncio.wait_for(read_response(reader, raw.startswith(b"HEAD")), timeout)
                for _ in range(answers)]
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader, head_only: bool = False
                        ) -> tuple[str, list[tuple[str, str]], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status, *lines = head.rstrip("\r\n").split("\r\n")
    fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    named = {k.lower(): v for k, v in fields}
    if head_only:
        body = b""
    elif "content-length" in named:
        body = await reader.readexactly(int(named["content-length"]))
    elif named.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    elif re.match(r"HTTP/1\.1 (204|304)", status):
        body = b""
    else:
        body = await reader.read()
    return status, fields, body


def get(path: str, cookie: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", f"Cookie: {cookie}", "Accept: application/json", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def comparable(answer: tuple[str, list, bytes], url: str) -> tuple[str, list, bytes]:
    """An answer without what differs between two proxies anyway: the date, the request id, their own URLs."""
    status, fields, body = answer
    kept = [(k, "" if k.lower() in VOLATILE else v.replace(url, "PROXY")) for k, v in fields]   # in order
    body = body.replace(url.encode(), b"PROXY")
    if body.startswith(b"{") and b"request_id" in body:
        data = json.loads(body)
        data.pop("request_id")
        body = json.dumps(data).encode()
    return status, kept, body


PATHS = ["/any/page?x=1&y=%2F", "/cookies", "/own-cookie", "/redirect", "/gzip", "/status/204", "/status/304",
         "/status/404", "/status/503", "/blob", "/download?n=300000", "/download?n=3000000", "/quick/slow?s=3",
         "/dead/x"]


@pytest.mark.parametrize("path", PATHS)
async def test_the_lane_answers_as_aiohttps_path_does(pair, rich, path):
    express, plain, cookie = pair
    lane = lane_of(express)
    before = lane.served
    rich.seen.clear()
    fast = await exchange(express.url, get(path, cookie))
    fast_seen = list(rich.seen)
    rich.seen.clear()
    slow = await exchange(plain.url, get(path, cookie))
    assert lane.served == before + 1, "the express proxy's lane did not serve it"
    assert comparable(fast[0], express.url) == comparable(slow[0], plain.url)
    status, fields, _ = fast[0]
    assert any(k == "X-Request-Id" for k, _ in fields) and any(k == "Date" for k, _ in fields)
    # What the app was sent is the same too, but the request id (and the proxies' own host names).
    def sent(seen: list[dict]) -> list[list[list[str]]]:
        return [[[k, v] for k, v in one["headers"] if k.lower() not in ("x-request-id", "x-forwarded-host")]
                for one in seen]
    assert sent(fast_seen) == sent(rich.seen)


async def test_the_request_id_is_the_clients_when_it_looks_like_one_and_the_app_gets_it(pair, rich):
    express, _, cookie = pair
    [(status, fields, body)] = await exchange(express.url, get("/echo", cookie, "X-Request-Id: trace-123"))
    assert status.startswith("HTTP/1.1 200") and ("X-Request-Id", "trace-123") in fields
    assert ["x-request-id", "trace-123"] in [[k.lower(), v] for k, v in rich.seen[-1]["headers"]]
    [(_, fields, _)] = await exchange(express.url, get("/echo", cookie, "X-Request-Id: bad id <x>"))
    assert dict(fields)["X-Request-Id"] != "bad id <x>" and ["x-request-id", "bad id <x>"] not in [
        [k.lower(), v] for k, v in rich.seen[-1]["headers"]]


async def test_client_headers_the_proxy_owns_never_reach_the_app(pair, rich):
    express, _, cookie = pair
    before = lane_of(express).served
    await exchange(express.url, get("/echo", cookie, "X-Forwarded-User: mallory", "X_Forwarded_User: mallory",
                                    "X-Original-URL: /admin", "Authorization: Bearer forged"))
    assert lane_of(express).served == before + 1
    seen = {k.lower(): v for k, v in rich.seen[-1]["headers"]}
    assert seen["x-forwarded-user"] != "mallory" and "x_forwarded_user" not in seen and "x-original-url" not in seen
    assert seen["authorization"] != "Bearer forged" and seen["authorization"].startswith("Bearer ")
    assert "_authproxy" not in seen.get("cookie", "")


@pytest.mark.parametrize("raw", [
    pytest.param(lambda c: get("/echo", c) + get("/blob", c), id="pipelined"),
    pytest.param(lambda c: get("/echo", c).replace(b"GET", b"HEAD"), id="head"),
    pytest.param(lambda c: get("/echo", c, "Content-Length: 3") + b"abc", id="body"),
    pytest.param(lambda c: get("/echo", c, "Connection: close"), id="connection-close"),
    pytest.param(lambda c: get("/echo", c).replace(b"HTTP/1.1", b"HTTP/1.0"), id="http/1.0"),
    pytest.param(lambda c: get("/a/../echo", c), id="dot-segment"),
    pytest.param(lambda c: get("/%65cho", c), id="percent"),
    pytest.param(lambda c: get("/echo", "other=1"), id="no-session"),
    pytest.param(lambda c: get("/echo", c, "Host: second.example"), id="two-hosts"),
    pytest.param(lambda c: get("/echo", c, "Upgrade: h2c", "Connection: Upgrade"), id="upgrade"),
    # aiohttp's own 400s on top of llhttp's (review F1): a repeated singleton field, too many fields, a too
    # long request line.
    pytest.param(lambda c: get("/echo", c, "User-Agent: a", "User-Agent: b"), id="two-user-agents"),
    pytest.param(lambda c: get("/echo", c, "Content-Type: a", "Content-Type: b"), id="two-content-types"),
    pytest.param(lambda c: get("/echo", c, *(f"X-F{i}: {i}" for i in range(130))), id="130-fields"),
    pytest.param(lambda c: get("/" + "a" * 9000, c), id="long-request-line"),
    pytest.param(lambda c: get("/echo", c, "Proxy-Connection: close"), id="proxy-connection"),
    pytest.param(lambda c: get("/echo", c, "Sec-WebSocket-Key1: 1"), id="old-websocket-key"),
])
async def test_what_the_lane_declines_aiohttp_answers_unchanged(pair, raw):
    express, plain, cookie = pair
    before = lane_of(express).served
    answers = 2 if b"/blob" in raw(cookie) else 1
    fast = await exchange(express.url, raw(cookie), answers)
    slow = await exchange(plain.url, raw(cookie), answers)
    assert lane_of(express).served == before, "declined"
    assert [comparable(a, express.url) for a in fast] == [comparable(a, plain.url) for a in slow]


async def test_a_head_in_two_reads_goes_to_aiohttp(pair):
    express, _, cookie = pair
    host, port = express.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    raw = get("/blob", cookie)
    writer.write(raw[:20])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(raw[20:])
    status, _, body = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert status.startswith("HTTP/1.1 200") and len(body) == 1234


async def test_bytes_sent_while_the_lane_serves_wait_their_turn(pair, rich):
    """A second request sent on the connection before the first is answered is answered after it, in order."""
    express, _, cookie = pair
    host, port = express.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    before = lane_of(express).served
    writer.write(get("/held", cookie))
    await asyncio.wait_for(rich.events.setdefault("held-arrived", asyncio.Event()).wait(), 10)
    writer.write(get("/blob", cookie))
    await writer.drain()
    await asyncio.sleep(0.2)
    rich.events.setdefault("held-release", asyncio.Event()).set()
    first = await asyncio.wait_for(read_response(reader), 10)
    second = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert first[2] == b"late" and second[2] == b"x" * 1234
    assert lane_of(express).served == before + 2


async def test_a_kept_alive_connection_closes_after_keepalive_timeout(pair):
    express, _, cookie = pair
    host, port = express.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(get("/blob", cookie))
    status, _, _ = await asyncio.wait_for(read_response(reader), 10)
    assert status.startswith("HTTP/1.1 200")
    writer.write(get("/blob", cookie))                  # still open for the next request
    assert (await asyncio.wait_for(read_response(reader), 10))[0].startswith("HTTP/1.1 200")
    assert await asyncio.wait_for(reader.read(), 5) == b""          # closed at keepalive_timeout (2 s)
    writer.close()


async def test_shutdown_lets_an_express_request_finish(stack_factory, rich, browser_session):
    stack = await stack_factory(upstreams=[{"path": "/", "url": rich.url}])
    await login_via_http(browser_session, stack.url + "/")
    before = lane_of(stack.proxy).served
    request = asyncio.ensure_future(browser_session.get(stack.url + "/held", headers={"Accept": "application/json"}))
    await asyncio.wait_for(rich.events.setdefault("held-arrived", asyncio.Event()).wait(), 10)
    closing = asyncio.ensure_future(stack.proxy.close())
    await asyncio.sleep(0.3)
    assert not closing.done(), "the shutdown waits for the request under way"
    rich.events.setdefault("held-release", asyncio.Event()).set()
    resp = await asyncio.wait_for(request, 10)
    assert resp.status == 200 and await resp.text() == "late"
    assert lane_of(stack.proxy).served == before + 1
    await asyncio.wait_for(closing, 20)


async def test_a_streamed_answer_is_cut_when_the_session_is_signed_out(pair, rich, browser_session):
    express, _, cookie = pair
    host, port = express.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(get("/endless", cookie))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readuntil(b"tick\n"), 10)
    async with aiohttp.ClientSession() as other:
        async with other.get(express.url + "/oauth2/sign_out", headers={"Cookie": cookie},
                             allow_redirects=False) as resp:
            assert resp.status == 302

    async def drained() -> None:
        while await reader.read(65536):
            pass
    await asyncio.wait_for(drained(), 10)           # the connection ends: the stream was cut
    await asyncio.wait_for(rich.events.setdefault("endless-gone", asyncio.Event()).wait(), 10)
    writer.close()


async def test_bytes_aiohttps_parser_holds_keep_the_connection_off_the_lane(pair, rich):
    """A read that ends inside a second head leaves its start in aiohttp's parser: the next read completes
    that head there (as with the lane off), never starts a request of its own on the lane (review F2)."""
    express, plain, cookie = pair
    answers = {}
    for proxy in (express, plain):
        rich.seen.clear()
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /from-prefix HTTP/1.1\r\nX-J: ")
        assert (await asyncio.wait_for(read_response(reader), 10))[0].startswith("HTTP/1.1 200")
        await asyncio.sleep(0.2)
        writer.write(get("/from-read2", cookie))
        await asyncio.wait_for(read_response(reader), 10)
        writer.close()
        answers[proxy.url] = [seen["raw_path"] for seen in rich.seen]
    assert answers[express.url] == answers[plain.url] == ["/from-prefix"]


async def test_a_head_that_ends_its_connection_leaves_the_lane_usable_for_the_next(pair):
    """llhttp refuses what follows ``Connection: close``: the lane's one parser must not carry that state
    to the next connection's request (review F4)."""
    express, _, cookie = pair
    lane = lane_of(express)
    for closing in ("Connection: close", "Proxy-Connection: close"):
        await exchange(express.url, get("/echo", cookie, closing))
        before = lane.served
        [(status, _, _)] = await exchange(express.url, get("/echo", cookie))
        assert status.startswith("HTTP/1.1 200") and lane.served == before + 1, closing


def slow_session_loads(proxy: RunningProxy, monkeypatch: pytest.MonkeyPatch, seconds: float) -> asyncio.Event:
    """Make the session store take ``seconds`` to load a session (a Redis round trip, drawn out); the event
    is set when a load begins."""
    store = proxy.app[STORE]
    loading = asyncio.Event()
    original = store.load

    async def slow_load(cookies):
        loading.set()
        await asyncio.sleep(seconds)
        return await original(cookies)
    monkeypatch.setattr(store, "load", slow_load)
    return loading


async def test_a_request_declined_during_a_shutdown_is_still_answered(stack_factory, rich, browser_session,
                                                                     monkeypatch):
    """The lane loads the session (a Redis round trip, here a slow load) and declines it; a shutdown began
    meanwhile, so aiohttp's parser takes no more bytes: the app's handlers answer it all the same (review F5)."""
    stack = await stack_factory(upstreams=[{"path": "/", "url": rich.url}])
    loading = slow_session_loads(stack.proxy, monkeypatch, 0.5)
    name = stack.proxy.config.cookie.name
    reply = asyncio.ensure_future(exchange(stack.url, get("/echo", f"{name}=garbage")))
    await asyncio.wait_for(loading.wait(), 10)
    closing = asyncio.ensure_future(stack.proxy.close())
    [(status, _, body)] = await asyncio.wait_for(reply, 15)
    assert status.startswith("HTTP/1.1 401") and b"login_url" in body
    await asyncio.wait_for(closing, 20)


async def test_a_bad_cookie_is_logged_once(pair, caplog):
    """The lane declines a cookie it cannot open without a word; the gate says why, once (review F8)."""
    express, _, _ = pair
    caplog.set_level(logging.INFO, logger="authproxy")
    name = express.config.cookie.name
    [(status, _, _)] = await exchange(express.url, get("/echo", f"{name}=garbage"))
    assert status.startswith("HTTP/1.1 401")
    assert len([r for r in caplog.records if "session cookie ignored" in r.getMessage()]) == 1


async def test_a_client_that_leaves_while_its_session_loads_is_a_499(stack_factory, rich, browser_session,
                                                                     monkeypatch, caplog):
    stack = await stack_factory(upstreams=[{"path": "/", "url": rich.url}], logging={"level": "info"})
    await login_via_http(browser_session, stack.url + "/")
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser_session.cookie_jar)
    caplog.set_level(logging.INFO, logger="authproxy.access")
    loading = slow_session_loads(stack.proxy, monkeypatch, 1.0)
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(get("/leaving", cookie))
    await asyncio.wait_for(loading.wait(), 10)
    writer.close()
    for _ in range(100):
        lines = [r for r in caplog.records if r.name == "authproxy.access" and "/leaving" in r.getMessage()]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert [line.fields["status"] for line in lines] == [499]


RAW_ANSWERS = {
    "/no-type": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "/odd-order": b"HTTP/1.1 200 Fine\r\nB: 1\r\nContent-Length: 2\r\nA: 2\r\nContent-Type: text/plain\r\n\r\nhi",
    "/app-id": b"HTTP/1.1 200 OK\r\nServer: app/1\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n"
               b"X-Request-Id: up-id\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    "/chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nhi\r\n0\r\n\r\n",
}


@pytest.fixture
async def raw_app():
    """An app that answers with exactly the bytes of RAW_ANSWERS (what aiohttp's server would tidy up)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(RAW_ANSWERS[head.split(b" ", 2)[1].decode()])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


@pytest.mark.parametrize("path", sorted(RAW_ANSWERS))
async def test_an_answer_aiohttp_would_tidy_is_tidied_the_same(stack_factory, raw_app, browser_session, path):
    """No Content-Type (aiohttp adds application/octet-stream: no sniffing, review F6), the app's own Date,
    Server and X-Request-Id, its field order, chunked framing: the same bytes either way (review F7)."""
    stack = await stack_factory(routes=[{"path": "/raw", "strip_prefix": True}])
    await login_via_http(browser_session, stack.url + "/")
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser_session.cookie_jar)
    data = config_dict(port=free_port(), issuer=stack.proxy.config.provider.issuer, upstream_url=raw_app,
                       client_id=CLIENT_ID, client_secret=CLIENT_SECRET, limits={"express": False})
    express_data = config_dict(port=free_port(), issuer=stack.proxy.config.provider.issuer, upstream_url=raw_app,
                               client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    plain, express = await start_proxy(data), await start_proxy(express_data)
    try:
        before = lane_of(express).served
        fast = await exchange(express.url, get(path, cookie))
        slow = await exchange(plain.url, get(path, cookie))
        assert lane_of(express).served == before + 1
        assert comparable(fast[0], express.url) == comparable(slow[0], plain.url)
        if path == "/no-type":
            assert ("Content-Type", "application/octet-stream") in fast[0][1]
    finally:
        await plain.close()
        await express.close()


async def test_the_lane_and_the_boundary_draw_request_ids_from_one_counter(pair, rich):
    """One id prefix per worker, whichever path answered."""
    express, _, cookie = pair
    [(_, served, _)] = await exchange(express.url, get("/echo", cookie))
    [(_, declined, _)] = await exchange(express.url, get("/echo", "other=1"))
    prefix = dict(served)["X-Request-Id"].rsplit("-", 1)[0]
    assert dict(declined)["X-Request-Id"].rsplit("-", 1)[0] == prefix


async def test_where_a_path_goes_is_decided_once_per_path_and_host(stack_factory, browser_session):
    """The lane keeps each (path, Host)'s route (``ExpressLane._routes``): a kept ``skip_auth`` or step-up
    decision still sends the request to aiohttp, and no more than ROUTE_CACHE routes are kept (per Host:
    tests/unit/test_express.py)."""
    from proxy.express import ROUTE_CACHE

    stack = await stack_factory(
        routes=[{"path": "/admin", "authorization": {"acr": ["urn:example:mfa"]}}], skip_auth=[{"path": "^/public/"}])
    await login_via_http(browser_session, stack.url + "/")
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser_session.cookie_jar)
    lane = lane_of(stack.proxy)
    for _ in range(2):                                   # the second time from the kept routes
        before = lane.served
        [(status, _, _)] = await exchange(stack.url, get("/public/x", cookie))
        assert status.startswith("HTTP/1.1 200") and lane.served == before      # skip_auth: aiohttp's
        assert "authorization" not in {k.lower() for k, _ in stack.echo.seen[-1]["headers"]}
        [(status, _, _)] = await exchange(stack.url, get("/admin/x", cookie))
        assert status.startswith("HTTP/1.1 401") and lane.served == before      # step-up: the gate's
        [(status, _, _)] = await exchange(stack.url, get("/echo", cookie))
        assert status.startswith("HTTP/1.1 200") and lane.served == before + 1
        assert "authorization" in {k.lower() for k, _ in stack.echo.seen[-1]["headers"]}
    for n in range(ROUTE_CACHE + 10):
        await exchange(stack.url, get(f"/page/{n}", cookie))
    assert 0 < len(lane._routes) <= ROUTE_CACHE


async def test_the_same_head_again_is_served_from_its_kept_parse_and_a_parked_connection_keeps_none(
        stack_factory, browser_session, monkeypatch):
    """Each of three identical heads on one connection reaches the app with its own request id and the
    session's token; the connection keeps the last head's bytes only while it is in use: parked (idle over a
    sweep) it holds none (bench/idle.py's memory per idle connection)."""
    from proxy import connections

    monkeypatch.setattr(connections, "SHED_INTERVAL", 0.05)
    stack = await stack_factory()
    await login_via_http(browser_session, stack.url + "/")
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser_session.cookie_jar)
    lane = lane_of(stack.proxy)
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        before = lane.served
        ids = set()
        for _ in range(3):
            writer.write(get("/echo", cookie))
            status, fields, _ = await asyncio.wait_for(read_response(reader), 10)
            assert status.startswith("HTTP/1.1 200")
            seen = {k.lower(): v for k, v in stack.echo.seen[-1]["headers"]}
            own = stack.proxy.config.cookie.name
            assert seen["authorization"].startswith("Bearer ") and own + "=" not in seen.get("cookie", "")
            ids.add(dict(fields)["X-Request-Id"])
        assert lane.served == before + 3 and len(ids) == 3
        mine = writer.get_extra_info("sockname")
        (handler,) = [h for h in stack.proxy.runner.server._connections   # type: ignore[union-attr]
                      if h.transport is not None and h.transport.get_extra_info("peername") == mine]
        assert handler.express_last is not None
        async with asyncio.timeout(3):
            while not handler._parked:
                await asyncio.sleep(0.02)
        assert handler.express_last is None
        writer.write(get("/echo", cookie))                             # parked: parsed afresh, served the same
        status, _, _ = await asyncio.wait_for(read_response(reader), 10)
        assert status.startswith("HTTP/1.1 200") and lane.served == before + 4
    finally:
        writer.close()
