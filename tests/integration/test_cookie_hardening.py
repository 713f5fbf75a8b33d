"""The proxy's cookies against an app and a browser that try to subvert them (issue 13), on the real stack:
oidc-provider, authproxy in-process, and an upstream that plants cookies and marks pages public
(``tests/support/cookie_app.py``).

- an app plants a second session cookie inside another cookie's value: the line is dropped, and the header a
  browser then sends still reads as the user's own session;
- one of our names arriving twice (a cookie tossed from a sibling subdomain): no session, and it is cleared;
- cookie names that are not RFC 6265 tokens, or chunk names with non-ASCII digits: never a 500, never a
  dropped connection;
- a sealed value respelled (junk base64 characters): not a session;
- a response that sets, refreshes or clears our cookie: never cacheable by a shared cache;
- forty sign-ins started at once in one browser: never a 400; the oldest login cookies are cleared and only
  the newest three can finish.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from proxy.context import SEALER
from proxy.login import MAX_LOGIN_COOKIES
from tests.support.cookie_app import CookieApp, session_cookie_for, start_cookie_app
from tests.support.ports import free_port
from tests.support.timing import OffsetClock

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html,application/xhtml+xml"}
API = {"Accept": "application/json"}
NAME = "_authproxy"           # the tests' proxies run on http, so cookie.secure is off and the name unprefixed
LOGIN_PREFIX = NAME + "_login_"
# Access-token lifetime at the provider, for the refresh case: long, so the first request is surely not due
# yet on a loaded machine; the proxy's clock is moved past half of it instead of the test sleeping.
TTL = 60


@pytest.fixture
async def cookie_app() -> AsyncIterator[CookieApp]:
    app = await start_cookie_app(free_port())
    yield app
    await app.close()


@pytest.fixture
async def app_stack(stack_factory, cookie_app):
    return await stack_factory(upstreams=[{"path": "/", "url": cookie_app.url}])


async def signed_in(stack: Any, username: str) -> str:
    """Sign ``username`` in with a fresh browser; the value of its session cookie."""
    return await session_cookie_for(stack.url, username, NAME)


async def get(url: str, cookie: str | None, headers: dict[str, str] = API) -> tuple[int, aiohttp.ClientResponse, str]:
    async with aiohttp.ClientSession() as client:
        sent = {**headers, **({"Cookie": cookie} if cookie is not None else {})}
        async with client.get(url, headers=sent, allow_redirects=False) as resp:
            return resp.status, resp, await resp.text()


def cleared(resp: aiohttp.ClientResponse) -> set[str]:
    """The cookie names this response clears."""
    return {h.split("=", 1)[0] for h in resp.headers.getall("Set-Cookie", ()) if "Max-Age=0" in h}


def user_shown(body: str) -> str:
    match = re.search(r"<pre id=user>(.*?)</pre>", body)
    assert match, body[:300]
    return match[1]


# -- an app planting a session, a sibling tossing one -----------------------------------------------------


async def test_an_app_cannot_plant_another_users_session_in_a_cookie_value(app_stack, cookie_app):
    """Issue 13: the app answers ``Set-Cookie: pref=dark _authproxy=<mallory> "``; chromium stores that as
    one cookie, ``pref``, and sends ``_authproxy=<alice>; pref=dark _authproxy=<mallory> "``, which a parser
    ending pairs at whitespace (last duplicate winning) read as mallory."""
    alice, mallory = await signed_in(app_stack, "alice"), await signed_in(app_stack, "mallory")
    line = f'pref=dark {NAME}={mallory} "; Path=/'
    status, resp, _ = await get(app_stack.url + "/plant?line=" + quote(line), f"{NAME}={alice}", HTML)
    assert status == 200
    planted = [h for h in resp.headers.getall("Set-Cookie", ()) if "pref=" in h]
    assert not planted, "the planted line reached the browser"
    # What the browser would send had it stored the line (and what an older proxy let it store).
    for cookie in (f'{NAME}={alice}; pref=dark {NAME}={mallory} "', f'pref=dark {NAME}={mallory} "; {NAME}={alice}'):
        status, _, body = await get(app_stack.url + "/page", cookie, HTML)
        assert status == 200 and user_shown(body) == "alice", cookie[:40]


@pytest.mark.parametrize("names", [(NAME, NAME), (NAME + "_0", NAME + "_0")])
async def test_our_cookie_name_twice_is_a_signed_out_user_and_cleared(app_stack, cookie_app, names):
    """Cookie tossing: a sibling subdomain sets ``_authproxy`` for the parent domain, and the browser sends both.
    Neither value is believed: the user is signed out and the cookie cleared."""
    alice, mallory = await signed_in(app_stack, "alice"), await signed_in(app_stack, "mallory")
    before = len(cookie_app.seen)
    for first, second in ((mallory, alice), (alice, mallory), (alice, alice)):
        cookie = f"{names[0]}={first}; theme=dark; {names[1]}={second}"
        status, resp, body = await get(app_stack.url + "/api", cookie)
        assert status == 401, body[:200]
        assert names[0] in cleared(resp)
        status, resp, _ = await get(app_stack.url + "/page", cookie, HTML)
        assert status == 302 and resp.headers["Location"].startswith(app_stack.idp.issuer)   # to sign in again
    assert len(cookie_app.seen) == before, "a request with an ambiguous session reached the app"


async def test_with_redis_sessions_a_ticket_twice_is_a_signed_out_user_too(stack_factory, cookie_app, redis_server):
    stack = await stack_factory(upstreams=[{"path": "/", "url": cookie_app.url}],
                                session={"store": "redis", "redis": {"url": redis_server.url}})
    alice, mallory = await signed_in(stack, "alice"), await signed_in(stack, "mallory")
    status, _, body = await get(stack.url + "/page", f'{NAME}={alice}; pref=dark {NAME}={mallory} "', HTML)
    assert status == 200 and user_shown(body) == "alice"
    status, resp, _ = await get(stack.url + "/api", f"{NAME}={mallory}; {NAME}={alice}")
    assert status == 401 and NAME in cleared(resp)


async def test_a_sign_in_state_cookie_twice_cannot_finish_a_sign_in(app_stack):
    status, resp, _ = await get(app_stack.url + "/oauth2/start?rd=/x", None, HTML)
    name, value = resp.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)
    state = name.removeprefix(LOGIN_PREFIX)
    status, resp, body = await get(f"{app_stack.url}/oauth2/callback?state={state}&code=x",
                                   f"{name}={value}; {name}={value}", HTML)
    assert status == 403 and "does not belong" in body
    assert name in cleared(resp)


# -- names that cannot be written back ---------------------------------------------------------------


async def raw_get(port: int, path: str, cookie: bytes, timeout: float = 5.0) -> bytes:
    """One GET on a fresh connection with a raw ``Cookie`` header; everything the server sent back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n"
                     b"Connection: close\r\nCookie: " + cookie + b"\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()


@pytest.mark.parametrize("cookie", [
    f"{LOGIN_PREFIX}x(y=1", f"{LOGIN_PREFIX}/=1", f"{LOGIN_PREFIX}@x=1", "/=1", "@=1", f"{LOGIN_PREFIX}a b=1",
    f"{LOGIN_PREFIX}\u00e9=1", f"{NAME}_\u00b2=1.x", f"{NAME}_\u0663=1.x", f"{NAME}_99=1.x",
    f"{LOGIN_PREFIX}x(y=1; {NAME}_\u00b2=1.x; {NAME}=junk",
])
async def test_cookie_names_that_are_not_tokens_never_break_a_response(app_stack, cookie):
    """Such names used to reach ``http.cookies`` while being evicted or cleared: a 500 at ``/oauth2/start``
    and on every signed-out page, or, when clearing ``_authproxy_²``, no answer at all."""
    port = urlsplit(app_stack.url).port
    for path in ("/oauth2/start?rd=/", "/page", "/oauth2/sign_out"):
        answer = await raw_get(port, path, cookie.encode("utf-8"))
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 30"), (path, answer[:300])
        # Nothing is written back under a name no Set-Cookie can carry.
        assert not re.search(rb"Set-Cookie: [^\r]*(\(|\xc2|\xd9|[/@] ?=)", answer), answer[:600]


# -- respelled sealed values ----------------------------------------------------------------------


async def test_a_respelled_session_cookie_is_a_signed_out_user(app_stack):
    """Python's base64 decoder skips junk: ``.``/``~`` inserted in fours opened the same session, each spelling
    a new AES-GCM open and a new entry in the decoded-session cache."""
    alice = await signed_in(app_stack, "alice")
    assert (await get(app_stack.url + "/api", f"{NAME}={alice}"))[0] == 200
    variants = (alice[:12] + "...." + alice[12:], alice[:12] + "~~~~" + alice[12:], alice[:30] + "~.~." + alice[30:])
    for variant in variants:
        status, resp, _ = await get(app_stack.url + "/api", f"{NAME}={variant}")
        assert status == 401 and NAME in cleared(resp)


# -- responses that set our cookies are private ----------------------------------------------------------


def assert_private(resp: aiohttp.ClientResponse) -> None:
    assert resp.headers.getall("Cache-Control") == ["private, max-age=3600"], resp.headers.getall("Cache-Control", [])
    assert "CDN-Cache-Control" not in resp.headers


async def test_a_cleared_login_cookie_makes_a_public_page_private(stack_factory, cookie_app):
    """A page passed without a session (``skip_auth``) that clears one of our cookies on the way (here a
    sign-in state that does not open) is private too: any of our Set-Cookie lines counts."""
    stack = await stack_factory(upstreams=[{"path": "/", "url": cookie_app.url}], skip_auth=[{"path": "^/public$"}])
    status, resp, _ = await get(stack.url + "/public", None, HTML)
    assert status == 200 and resp.headers["Cache-Control"] == "public, max-age=3600"   # nothing of ours: kept
    status, resp, _ = await get(stack.url + "/public", f"{LOGIN_PREFIX}abc=1.not-a-login", HTML)
    assert status == 200 and cleared(resp) == {LOGIN_PREFIX + "abc"}
    assert_private(resp)


async def test_a_refreshed_session_cookie_makes_a_public_page_private(stack_factory, cookie_app):
    """RFC 9111 §8: a shared cache that stored this response would give the new session to the next visitor."""
    clock = OffsetClock()
    stack = await stack_factory(upstreams=[{"path": "/", "url": cookie_app.url}], clock=clock,
                                idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True})
    alice = await signed_in(stack, "alice")
    status, resp, _ = await get(stack.url + "/public", f"{NAME}={alice}", HTML)
    assert status == 200 and not resp.headers.getall("Set-Cookie", [])
    assert resp.headers["Cache-Control"] == "public, max-age=3600"
    clock.advance(TTL / 2 + 1)                                 # inside the refresh window
    status, resp, body = await get(stack.url + "/public", f"{NAME}={alice}", HTML)
    assert status == 200 and user_shown(body) == "alice"
    assert [h for h in resp.headers.getall("Set-Cookie", []) if h.startswith(NAME + "=")], "no refresh happened"
    assert_private(resp)


# -- sign-ins started at once ------------------------------------------------------------------------


async def test_concurrent_sign_ins_never_make_the_browser_a_400(app_stack):
    """Forty tabs (or a script) start a sign-in at once: each request sees the same, empty cookie set, so each
    evicts nothing and adds one. The next request carries all of them (≈ 27 KB here, with a deep link):
    it must still be answered, with all but the newest three cleared; only those three can finish."""
    rd = "/reports/" + "q" * 200
    async with aiohttp.ClientSession() as client:
        async def start() -> tuple[str, str]:
            async with client.get(app_stack.url + "/oauth2/start?rd=" + rd, headers=HTML, allow_redirects=False) as r:
                assert r.status == 302
                return tuple(r.headers["Set-Cookie"].split(";", 1)[0].split("=", 1))   # type: ignore[return-value]
        logins = await asyncio.gather(*(start() for _ in range(40)))
    sealer = app_stack.proxy.app[SEALER]
    created = {name: json.loads(sealer.open(value, name.encode()))["created"] for name, value in logins}
    by_age = sorted(created, key=created.__getitem__)
    newest, older = set(by_age[-MAX_LOGIN_COOKIES:]), set(by_age[:-MAX_LOGIN_COOKIES])
    cookie = "; ".join(f"{n}={v}" for n, v in logins)
    assert len(cookie) > 16384
    status, resp, _ = await get(app_stack.url + "/api", cookie)
    assert status == 401, status
    assert cleared(resp) == older
    # A page starts one more sign-in, so it keeps room for it: the oldest of the three goes too.
    status, resp, _ = await get(app_stack.url + "/page", cookie, HTML)
    assert status == 302, status
    assert cleared(resp) == older | {by_age[-MAX_LOGIN_COOKIES]}
    # The callback accepts only the newest three, whatever cookies came with it.
    oldest_state = by_age[0].removeprefix(LOGIN_PREFIX)
    status, resp, body = await get(f"{app_stack.url}/oauth2/callback?state={oldest_state}&code=x", cookie, HTML)
    assert status == 403 and "does not belong" in body
    assert older <= cleared(resp)
    for name in newest:
        _, _, body = await get(f"{app_stack.url}/oauth2/callback?state={name.removeprefix(LOGIN_PREFIX)}"
                                    "&code=not-a-code", cookie, HTML)
        assert "does not belong" not in body, body[:300]       # past the state check (the code is bogus)


async def test_a_started_sign_in_evicts_down_to_the_cap(app_stack):
    """The start itself keeps the newest two and adds one, so one browser never holds more than three."""
    async with aiohttp.ClientSession() as client:
        cookies: dict[str, str] = {}
        for _ in range(MAX_LOGIN_COOKIES + 3):
            header = "; ".join(f"{n}={v}" for n, v in cookies.items())
            async with client.get(app_stack.url + "/oauth2/start", headers={**HTML, "Cookie": header},
                                  allow_redirects=False) as resp:
                for line in resp.headers.getall("Set-Cookie"):
                    name, value = line.split(";", 1)[0].split("=", 1)
                    if "Max-Age=0" in line:
                        cookies.pop(name, None)
                    else:
                        cookies[name] = value
                state = parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
            assert LOGIN_PREFIX + state in cookies and len(cookies) <= MAX_LOGIN_COOKIES


async def test_a_deep_link_too_long_for_a_cookie_still_signs_in(app_stack):
    """Browsers drop a cookie over 4096 bytes of name and value (RFC 6265bis §5.6): a login cookie carrying a
    4 KB ``rd`` was never sent back, and the sign-in failed at the callback. It now returns to "/" instead."""
    async with aiohttp.ClientSession() as client:
        for rd, back_to in (("/r/" + "q" * 3900, "/"), ("/r/" + "q" * 1500, "/r/" + "q" * 1500)):
            async with client.get(app_stack.url + "/oauth2/start?rd=" + rd, headers=HTML, allow_redirects=False) as r:
                name, value = r.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)
            assert len(name) + 1 + len(value) <= 4096
            login = json.loads(app_stack.proxy.app[SEALER].open(value, name.encode()))
            assert login["rd"] == app_stack.url + back_to
