"""Request smuggling and splitting between the client, authproxy's parser and the app behind it.

Every attack is sent on a raw socket to the in-process proxy (served as in production) with a signed-in
user's cookie, and each test asserts both what the proxy answered and what the echo upstream received:
an ambiguous message is refused before the app; an unambiguous one reaches the app as exactly one
request, framed by the proxy itself (so whatever framing the client chose, the app sees one body of
the right length), never with a second request hidden in it. The first round (CL+TE, two
Content-Length, obs-fold, bare LF, NUL...) is in test_hostile_browser.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.integration.conftest import Stack, StackFactory
from tests.integration.test_limits import HeadServer, _raw
from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.support.evil_idp import start_evil_stack

pytestmark = pytest.mark.integration


class Attacker:
    """A signed-in user with a raw socket to the proxy, and a view of what the upstream received."""

    def __init__(self, stack: Stack, cookie: str) -> None:
        self.stack = stack
        self.host = urlsplit(stack.url).netloc
        self.head = f"Host: {self.host}\r\nCookie: {cookie}\r\nAccept: application/json\r\n"
        self.inner = f"GET /smuggled HTTP/1.1\r\n{self.head}\r\n"

    async def send(self, data: str) -> tuple[list[int], list[dict[str, Any]]]:
        """The statuses of every answer on one connection, and the requests the upstream got meanwhile."""
        before = len(self.stack.echo.seen)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.stack.proxy.config.listen_port)
        writer.write(data.encode())
        answer = b""
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    answer += chunk
        except TimeoutError:
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.05)
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]
        return statuses, self.stack.echo.seen[before:]


@pytest.fixture
async def attacker(stack: Stack) -> AsyncIterator[Attacker]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        assert (await login_via_http(browser, stack.url + "/")).status == 200
        cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("_authproxy"))
    yield Attacker(stack, cookie)


def _post(attacker: Attacker, fields: str, body: str) -> str:
    return f"POST /a HTTP/1.1\r\n{attacker.head}{fields}Connection: close\r\n\r\n{body}"


# Refused before the app: framing that two parsers could read two ways.
REFUSED = {
    "Transfer-Encoding: chunked, identity": ("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n{inner}"),
    "Transfer-Encoding: xchunked": ("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n{inner}"),
    "Transfer-Encoding: identity": ("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello"),
    "Content-Length: +5": ("Content-Length: +5\r\n", "hello"),
    "Content-Length: -1": ("Content-Length: -1\r\n", "hello"),
    "Content-Length: 0x5": ("Content-Length: 0x5\r\n", "hello"),
    "Content-Length: 5.0": ("Content-Length: 5.0\r\n", "hello"),
    "Content-Length with a non-ASCII digit": ("Content-Length: \uff15\r\n", "hello"),
    "Content-Length beyond 64 bits": ("Content-Length: 99999999999999999999999\r\n", "hello"),
    "chunk size beyond 64 bits": ("Transfer-Encoding: chunked\r\n", "fffffffffffffffff5\r\nhello\r\n0\r\n\r\n"),
    "chunk size 0x5": ("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk size -5": ("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
    "chunk size with a space": ("Transfer-Encoding: chunked\r\n", "5 \r\nhello\r\n0\r\n\r\n"),
    "chunk extension with a bare LF": ("Transfer-Encoding: chunked\r\n", "5;a\nb\r\nhello\r\n0\r\n\r\n"),
    "chunk lines ending in bare LF": ("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"),
    "chunk data longer than its size": ("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n{inner}"),
    "CR alone in a header value": ("X-A: a\rb\r\nContent-Length: 0\r\n", ""),
}


@pytest.mark.parametrize("label", REFUSED)
async def test_ambiguous_framing_is_a_400_and_never_reaches_the_app(attacker, label):
    fields, body = REFUSED[label]
    statuses, seen = await attacker.send(_post(attacker, fields, body.format(inner=attacker.inner)))
    assert statuses == [400]
    assert seen == []


# Accepted, and re-framed by the proxy: the app gets one request with exactly this body.
REFRAMED = {
    "Transfer-Encoding: identity, chunked": "Transfer-Encoding: identity, chunked\r\n",
    "Transfer-Encoding: Chunked": "Transfer-Encoding: Chunked\r\n",
    "Transfer-Encoding with a tab": "Transfer-Encoding:\tchunked\r\n",
}


@pytest.mark.parametrize("label", REFRAMED)
async def test_unusual_but_clear_chunked_framing_reaches_the_app_as_one_body(attacker, label):
    body = f"5;ext=1\r\nhello\r\n{len(attacker.inner):x}\r\n{attacker.inner}\r\n0\r\n\r\n"
    statuses, seen = await attacker.send(_post(attacker, REFRAMED[label], body))
    assert statuses == [200]
    assert [(r["path"], r["body_size"]) for r in seen] == [("/a", 5 + len(attacker.inner))]


async def test_a_trailer_cannot_set_identity_headers(attacker):
    body = "5\r\nhello\r\n0\r\nX-Forwarded-User: root\r\nAuthorization: Bearer forged\r\n\r\n"
    statuses, seen = await attacker.send(_post(attacker, "Transfer-Encoding: chunked\r\n", body))
    assert statuses == [200] and len(seen) == 1
    assert header_values(seen[0], "X-Forwarded-User") == ["alice"]
    assert header_values(seen[0], "Authorization") != ["Bearer forged"]


async def test_a_get_with_a_body_is_one_request_whichever_client_carries_it(attacker):
    inner = attacker.inner
    for framing, body in ((f"Content-Length: {len(inner)}\r\n", inner),
                          ("Transfer-Encoding: chunked\r\n", f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n")):
        request = f"GET /a HTTP/1.1\r\n{attacker.head}{framing}Connection: close\r\n\r\n{body}"
        statuses, seen = await attacker.send(request)
        assert statuses == [200]
        assert [(r["method"], r["path"], r["body_size"]) for r in seen] == [("GET", "/a", len(inner))]


async def test_pipelined_requests_keep_their_own_identity(attacker):
    anonymous = f"GET /p2 HTTP/1.1\r\nHost: {attacker.host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    statuses, seen = await attacker.send(f"GET /p1 HTTP/1.1\r\n{attacker.head}\r\n" + anonymous)
    assert statuses == [200, 401]                        # the second has no cookie: it is not the first's user
    assert [r["path"] for r in seen] == ["/p1"]


async def test_http_1_0_keep_alive_is_two_requests_each_answered(attacker):
    second = f"GET /b HTTP/1.0\r\n{attacker.head}\r\n"
    statuses, seen = await attacker.send(f"GET /a HTTP/1.0\r\n{attacker.head}Connection: keep-alive\r\n\r\n{second}")
    assert statuses == [200, 200]
    assert [r["path"] for r in seen] == ["/a", "/b"]
    assert all(header_values(r, "X-Forwarded-User") == ["alice"] for r in seen)


async def test_expect_edge_cases(attacker):
    statuses, seen = await attacker.send(_post(attacker, "Expect: bogus\r\nContent-Length: 5\r\n", "hello"))
    assert statuses == [417] and seen == []             # RFC 9110 §10.1.1: an expectation not met
    statuses, seen = await attacker.send(_post(attacker, "Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"))
    assert statuses == [100, 200]
    assert [(r["path"], r["body_size"]) for r in seen] == [("/a", 5)]
    request = f"GET /g HTTP/1.1\r\n{attacker.head}Expect: 100-continue\r\nConnection: close\r\n\r\n"
    statuses, seen = await attacker.send(request)        # no body to continue with: still one request
    assert statuses[-1] == 200 and [r["path"] for r in seen] == ["/g"]


H2C = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_h2c_upgrade_is_never_forwarded(attacker, method):
    """h2c smuggling: an app (or a server in front of it) that switched to HTTP/2 on our connection would
    take requests on it that no rule of ours ever saw."""
    body = "Content-Length: 5\r\n" if method == "POST" else ""
    statuses, seen = await attacker.send(f"{method} /a HTTP/1.1\r\n{attacker.head}{H2C}{body}\r\n"
                                         + ("hello" if body else ""))
    assert statuses == [200] and len(seen) == 1
    for name in ("Upgrade", "HTTP2-Settings"):
        assert header_values(seen[0], name) == []
    assert all("upgrade" not in v.lower() for v in header_values(seen[0], "Connection"))


async def test_connection_cannot_strip_the_proxys_own_headers(attacker):
    request = (f"GET /a HTTP/1.1\r\n{attacker.head}"
               "Connection: close, X-Forwarded-User, Authorization, X-Forwarded-For\r\n\r\n")
    statuses, seen = await attacker.send(request)
    assert statuses == [200]
    assert header_values(seen[0], "X-Forwarded-User") == ["alice"]
    assert [v.startswith("Bearer ") for v in header_values(seen[0], "Authorization")] == [True]
    assert header_values(seen[0], "X-Forwarded-For") != []


async def test_an_access_token_that_would_split_a_header_is_refused_at_sign_in():
    """Response splitting through a value we set: the provider's access token goes into every upstream
    request's Authorization header. One with CR LF was a 500 on every request; now sign-in refuses it."""
    stack = await start_evil_stack()
    issue = stack.idp._issue

    def split_token(sub: str, refresh_token: str | None = None) -> dict[str, Any]:
        body = issue(sub, refresh_token)
        body["access_token"] = "x\r\nX-Injected: 1"
        return body

    stack.idp._issue = split_token                       # type: ignore[method-assign]
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            result = await login_via_http(browser, stack.proxy.url + "/")
        assert result.status == 502 and "identity provider" in result.body_text.lower()
        assert stack.echo.seen == []
    finally:
        await stack.proxy.close()
        await stack.echo.close()
        await stack.idp.close()


async def test_lean_and_aiohttp_paths_send_one_request_per_request(stack_factory: StackFactory):
    """Keep-alive to the upstream: after a response the lean client cut short (the client hung up), the
    next request on the pooled connection is not answered with the rest of the old one."""
    stack = await stack_factory(skip_auth=[{"path": "^/"}])
    async with aiohttp.ClientSession() as client:
        for i in range(5):
            async with client.get(f"{stack.url}/r{i}", headers={"Accept": "application/json"}) as resp:
                assert (await resp.json())["path"] == f"/r{i}"
            async with client.post(f"{stack.url}/p{i}", data=b"x" * 10) as resp:
                assert (await resp.json())["path"] == f"/p{i}"
    assert [r["path"] for r in stack.echo.seen] == [p for i in range(5) for p in (f"/r{i}", f"/p{i}")]


# -- the response side ---------------------------------------------------------------------------------------------


@pytest.fixture
async def raw_upstream(stack_factory: StackFactory) -> AsyncIterator[tuple[Stack, HeadServer]]:
    server = HeadServer()
    stack = await stack_factory(upstreams=[{"path": "/", "url": await server.start()}], skip_auth=[{"path": "^/"}])
    yield stack, server
    await server.close()


GET = b"GET /x HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab"
BAD_ANSWERS = {
    "101 to a plain request": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                               b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmugg"),
    "Content-Length and Transfer-Encoding": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n"
                                             b"\r\n5\r\nsmugg\r\n0\r\n\r\n"),
    "two Content-Length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nsmugg",
    "CR in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\rsmugg\r\nContent-Length: 2\r\n\r\nok",
    "NUL in a header value": b"HTTP/1.1 200 OK\r\nX-A: a\x00smugg\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("label", BAD_ANSWERS)
@pytest.mark.parametrize("request_bytes", [GET, POST], ids=["lean client", "aiohttp client"])
async def test_an_ambiguous_or_interim_answer_from_the_app_is_a_502(raw_upstream, label, request_bytes):
    stack, server = raw_upstream
    server.head = BAD_ANSWERS[label]
    answer = await _raw(stack, request_bytes)
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert b"smugg" not in answer


async def test_bytes_after_an_answer_are_not_a_second_answer(raw_upstream):
    stack, server = raw_upstream
    server.head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmugg"
    for request_bytes in (GET, POST):
        answer = await _raw(stack, request_bytes)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok") and b"smugg" not in answer
