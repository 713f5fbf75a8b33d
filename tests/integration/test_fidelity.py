"""Proxy fidelity: whatever the app behind us does over HTTP reaches the browser unchanged."""

from __future__ import annotations

import asyncio
import gzip
import os
import tempfile

import aiohttp
import pytest

from tests.support.browserless import login_via_http
from tests.support.ports import free_port
from tests.support.rich_upstream import GZIPPED, start_rich_upstream

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}


@pytest.fixture
async def signed_in(stack_factory, rich, browser_session):
    """A proxy in front of the rich upstream (plus a prefix-stripped and a slow route), signed in."""
    stack = await stack_factory(upstreams=[
        {"path": "/", "url": rich.url},
        {"path": "/app", "url": rich.url + "/mounted", "strip_prefix": True},
        {"path": "/quick", "url": rich.url, "timeout": "1s", "strip_prefix": True},
        {"path": "/own-host", "url": rich.url, "pass_host_header": False},
    ])
    await login_via_http(browser_session, stack.url + "/")
    return stack, browser_session


async def test_sse_first_event_arrives_before_upstream_finishes(signed_in, rich):
    stack, client = signed_in
    async with client.get(stack.url + "/sse", headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        assert not rich.events.get("sse-release") or not rich.events["sse-release"].is_set()
        rich.events.setdefault("sse-release", asyncio.Event()).set()
        assert await asyncio.wait_for(resp.content.read(), 5) == b"data: second\n\n"


async def test_several_set_cookie_headers_stay_separate(signed_in):
    stack, client = signed_in
    async with client.get(stack.url + "/cookies", headers=API) as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_upstream_cannot_set_the_proxys_cookies(signed_in):
    stack, client = signed_in
    async with client.get(stack.url + "/own-cookie", headers=API) as resp:
        assert resp.headers.getall("Set-Cookie") == ["app=1; Path=/"]


async def test_upstream_redirects_pass_through_untouched(signed_in):
    stack, client = signed_in
    async with client.get(stack.url + "/redirect", headers=API, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/elsewhere?x=1"
    async with client.get(stack.url + "/absolute-redirect", headers=API, allow_redirects=False) as resp:
        assert resp.status == 301 and resp.headers["Location"] == "https://other.example/landing"


async def test_content_encoding_is_not_decoded(signed_in):
    stack, _ = signed_in
    async with aiohttp.ClientSession(cookie_jar=signed_in[1].cookie_jar, auto_decompress=False) as raw:
        async with raw.get(stack.url + "/gzip", headers=API) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            body = await resp.read()
    assert body == GZIPPED and gzip.decompress(body).startswith(b"compressed body")


@pytest.mark.parametrize("code", [204, 304])
async def test_bodiless_statuses(signed_in, code):
    stack, client = signed_in
    async with client.get(stack.url + f"/status/{code}", headers=API) as resp:
        assert resp.status == code and await resp.read() == b""
        if code == 304:
            assert resp.headers["ETag"] == '"v1"'


async def test_head_has_length_but_no_body(signed_in):
    stack, client = signed_in
    async with client.head(stack.url + "/blob", headers=API) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "1234"
        assert await resp.read() == b""


async def test_upload_with_length_and_chunked(signed_in):
    stack, client = signed_in
    async with client.post(stack.url + "/upload", data=b"u" * 300_000, headers=API) as resp:
        seen = await resp.json()
    assert seen["body_size"] == 300_000 and seen["content_length"] == "300000" and seen["transfer_encoding"] is None

    async def parts():
        for _ in range(5):
            yield b"c" * 10_000
    async with client.post(stack.url + "/upload", data=parts(), headers=API) as resp:
        seen = await resp.json()
    assert seen["body_size"] == 50_000 and seen["transfer_encoding"] == "chunked"


async def test_compressed_request_body_goes_upstream_as_sent(signed_in):
    """A request body with Content-Encoding is not decoded on the way (aiohttp's server would by default)."""
    stack, client = signed_in
    packed = gzip.compress(b"z" * 200_000)
    async with client.post(stack.url + "/upload", data=packed,
                           headers={**API, "Content-Encoding": "gzip", "Content-Type": "text/plain"}) as resp:
        seen = await resp.json()
    assert seen["body_size"] == len(packed) < 200_000


async def test_expect_100_continue(signed_in):
    stack, client = signed_in
    async with client.post(stack.url + "/upload", data=b"e" * 5000, headers=API, expect100=True) as resp:
        assert resp.status == 200 and (await resp.json())["body_size"] == 5000


async def test_strip_prefix_and_path_normalisation(signed_in, rich):
    stack, client = signed_in
    async with client.get(stack.url + "/app/users/7?q=1", headers=API) as resp:
        assert (await resp.json())["raw_path"] == "/mounted/users/7?q=1"
    # Dot-segments and encoded dots resolve before routing: /app/../x goes to "/" upstream, not /app.
    async with client.get(stack.url + "/app/%2e%2e/x", headers=API) as resp:
        assert (await resp.json())["raw_path"] == "/x"


async def test_query_string_reaches_upstream_byte_for_byte(signed_in):
    stack, client = signed_in
    from yarl import URL
    raw = "/q?y=a%20b&h=%23frag&p=1%2B1&u=%C3%A9&empty=&flag"
    async with client.get(URL(stack.url + raw, encoded=True), headers=API) as resp:
        assert (await resp.json())["raw_path"] == raw


async def test_pass_host_header(signed_in, rich):
    stack, client = signed_in
    async with client.get(stack.url + "/echo", headers=API) as resp:
        assert (await resp.json())["host"] == stack.url.removeprefix("http://")
    async with client.get(stack.url + "/own-host/x", headers=API) as resp:
        assert (await resp.json())["host"] == rich.url.removeprefix("http://")


async def test_slow_upstream_504_unreachable_502_proxy_stays_up(signed_in, stack_factory):
    stack, client = signed_in
    async with client.get(stack.url + "/quick/slow?s=3", headers=API) as resp:
        assert resp.status == 504 and (await resp.json())["request_id"]
    dead = await stack_factory(upstreams=[{"path": "/", "url": f"http://127.0.0.1:{free_port()}"}])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        landed = await login_via_http(other, dead.url + "/page")      # signs in, then the app is down
        assert landed.status == 502 and "could not be reached" in landed.body_text
        async with other.get(dead.url + "/ping") as resp:
            assert resp.status == 200
    async with client.get(stack.url + "/blob", headers=API) as resp:
        assert resp.status == 200


async def test_upstream_disconnect_ends_client_response(signed_in):
    stack, client = signed_in
    async with client.get(stack.url + "/broken", headers=API) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with client.get(stack.url + "/blob", headers=API) as resp:    # and the proxy is fine
        assert resp.status == 200


async def test_client_disconnect_cancels_upstream_request(signed_in, rich):
    stack, client = signed_in
    resp = await client.get(stack.url + "/endless", headers=API)
    assert await resp.content.readline() == b"tick\n"
    resp.close()                                   # the browser goes away mid-stream
    gone = rich.events.setdefault("endless-gone", asyncio.Event())
    await asyncio.wait_for(gone.wait(), 5)


async def test_unix_socket_upstream(stack_factory, browser_session):
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "app.sock")
        up = await start_rich_upstream(unix_path=sock)
        try:
            stack = await stack_factory(upstreams=[{"path": "/", "url": up.url}])
            await login_via_http(browser_session, stack.url + "/")
            async with browser_session.get(stack.url + "/over/socket?x=1", headers=API) as resp:
                seen = await resp.json()
            assert seen["raw_path"] == "/over/socket?x=1"
            assert any(k == "Authorization" for k, _ in up.seen[-1]["headers"])
        finally:
            await up.close()


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_headers_only_from_trusted_proxies(stack_factory, rich, browser_session, trusted):
    stack = await stack_factory(upstreams=[{"path": "/", "url": rich.url}],
                                trusted_proxies=["127.0.0.0/8"] if trusted else [])
    await login_via_http(browser_session, stack.url + "/")
    spoof = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "lb.example"}
    async with browser_session.get(stack.url + "/xff", headers={**API, **spoof}) as resp:
        assert resp.status == 200
    seen = {k.lower(): v for k, v in rich.seen[-1]["headers"]}
    if trusted:
        assert seen["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-host"] == "lb.example"
    else:
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-host"] == stack.url.removeprefix("http://")


async def test_request_id_is_kept_or_made_passed_upstream_and_returned(signed_in, rich):
    stack, client = signed_in
    async with client.get(stack.url + "/rid", headers={**API, "X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"
    assert [v for k, v in rich.seen[-1]["headers"] if k.lower() == "x-request-id"] == ["abc-123"]
    async with client.get(stack.url + "/rid", headers={**API, "X-Request-Id": "bad id\\r\\n"}) as resp:
        made = resp.headers["X-Request-Id"]
    assert made != "bad id\\r\\n" and [v for k, v in rich.seen[-1]["headers"] if k.lower() == "x-request-id"] == [made]
