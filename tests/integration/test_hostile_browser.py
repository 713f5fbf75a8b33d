"""A browser (or a script posing as one) that attacks the proxy, against the real stack (oidc-provider, echo, proxy).

- open redirects through ``rd`` on ``/oauth2/start`` and ``/oauth2/sign_out``: a login always ends on
  ``public_url``'s origin, a sign-out only ever leaves it for the provider's end-session endpoint;
- cookies that were tampered with, cut, reordered, sealed elsewhere, expired or swapped: a signed-out
  user, never a 500 and never another user's session;
- identity, credential and forwarding headers sent by the client never reach the upstream, and the Host
  header never changes where the provider sends the browser back;
- session fixation: a session planted before login is replaced by the one the login creates;
- request smuggling basics, over raw sockets: ambiguous framing is a 400 from the HTTP parser and never
  reaches the upstream;
- sizes: an oversized header is a clear 4xx, and login-state cookies stay bounded;
- routing: an upstream only ever receives paths under its own prefix, whatever dot segments say.

The test clients cannot leave 127.0.0.1: a redirect off-origin fails in the resolver instead of touching the
network, and the test reports it.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from yarl import URL

from proxy.context import PROVIDER, SEALER
from proxy.cookies import CookieCodec
from proxy.crypto import Sealer
from proxy.login import MAX_LOGIN_COOKIES
from proxy.session import CODEC, Identity, Session
from tests.support.browserless import login_via_http
from tests.support.echo import EchoServer, header_values, start_echo
from tests.support.evil_idp import EvilStack, start_evil_stack
from tests.support.ports import free_port
from tests.support.proxyrun import OTHER_SECRET
import contextlib

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html,application/xhtml+xml"}
API = {"Accept": "application/json"}
SESSION_NAME = re.compile(r"^_authproxy(?:_\d+)?$")
LOGIN_PREFIX = "_authproxy_login_"

# Redirect targets an attacker puts in ``rd``. ``{origin}`` is the proxy's public origin, ``{host}`` its
# host:port. Each must leave the user on ``{origin}`` (most fall back to "/").
REDIRECT_PAYLOADS = [
    # scheme-relative and slash/backslash confusion (browsers read "\" as "/")
    "//evil.example", "///evil.example", "////evil.example/x", "/\\evil.example", "\\/\\/evil.example",
    "\\\\evil.example", "/\\/evil.example", "/.\\/evil.example", " //evil.example", "/..//evil.example",
    # schemes without slashes, mixed case, other schemes
    "https:evil.example", "https:/evil.example", "http:evil.example", "HtTpS:evil.example", "HTTP://evil.example",
    "http://evil.example", "https://evil.example/", "ftp://{host}/", "https://{host}:444/", "evil.example",
    "javascript:alert(1)", "JaVaScRiPt:alert(document.cookie)", "java\tscript:alert(1)", " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    # userinfo, fragments and look-alike hosts
    "{origin}@evil.example", "{origin}.evil.example/", "http://{host}@evil.example/", "http://user:pw@{host}/",
    "http://evil.example#@{host}", "http://evil.example?@{host}", "http://evil.example\\@{host}",
    "{origin}\\@evil.example", "//evil.example@{host}", "http://127.0.0.1.evil.example/",
    # percent-encoding, single and double
    "%2F%2Fevil.example", "/%2F/evil.example", "/%2f%2fevil.example", "/%252F%252Fevil.example",
    "/%09/evil.example", "/%5Cevil.example", "/%5cevil.example", "/%5C%5Cevil.example", "/%2F%5Cevil.example",
    # controls and CR/LF injection
    "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "/x\r\nSet-Cookie: pwned=1",
    "/x%0d%0aSet-Cookie:%20pwned=1", "/x\r\nLocation: http://evil.example/", "\x00//evil.example",
    # IDN and Unicode look-alikes
    "https://еvil.example/", "http://xn--vil-8cd.example/", "//evil\u3002example", "/\u2215\u2215evil.example",
    "/\uff0f\uff0fevil.example", "http://\u0127.0.0.1/",
]


class LoopbackOnlyResolver(AbstractResolver):
    """Resolves nothing: every server here is an IP literal, so asking for a name means we were sent away."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        raise OSError(f"refusing to resolve {host!r}: the test was redirected off 127.0.0.1")

    async def close(self) -> None:
        return None


def loopback_browser(**kwargs: Any) -> aiohttp.ClientSession:
    """A cookie-keeping client for 127.0.0.1 that cannot be redirected anywhere else."""
    return aiohttp.ClientSession(cookie_jar=kwargs.pop("cookie_jar", None) or aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(resolver=LoopbackOnlyResolver()), **kwargs)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def expand(payload: str, url: str) -> str:
    return payload.replace("{origin}", url).replace("{host}", urlsplit(url).netloc)


def session_cookies(session: aiohttp.ClientSession) -> dict[str, str]:
    return {c.key: c.value for c in session.cookie_jar if SESSION_NAME.match(c.key) and c.value}


def cookie_header(cookies: dict[str, str] | list[tuple[str, str]]) -> str:
    pairs = cookies.items() if isinstance(cookies, dict) else cookies
    return "; ".join(f"{name}={value}" for name, value in pairs)


def set_cookie_values(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """``Set-Cookie`` name -> value for every cookie this response sets or clears."""
    out = {}
    for header in resp.headers.getall("Set-Cookie", []):
        name, _, rest = header.partition("=")
        out[name] = rest.split(";", 1)[0].strip('"')
    return out


@pytest.fixture
async def logged_in(stack, browser_session) -> AsyncIterator[tuple[Any, aiohttp.ClientSession]]:
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 200
    yield stack, browser_session


@pytest.fixture
async def evil_stack() -> AsyncIterator[EvilStack]:
    stack = await start_evil_stack(end_session=False)
    yield stack
    await stack.close()


# -- open redirects ------------------------------------------------------------------------------------------


def test_there_are_enough_redirect_payloads():
    assert len(REDIRECT_PAYLOADS) >= 40
    assert len(set(REDIRECT_PAYLOADS)) == len(REDIRECT_PAYLOADS)


async def test_login_always_ends_on_the_public_origin(stack):
    """Each payload as ``rd``, through a complete login at the real provider: where does the browser land?"""
    failures: dict[str, str] = {}
    for payload in REDIRECT_PAYLOADS:
        target = expand(payload, stack.url)
        async with loopback_browser() as browser:
            try:
                result = await login_via_http(browser, stack.url + "/oauth2/start?" + urlencode({"rd": target}))
            except (aiohttp.ClientError, ValueError, OSError) as exc:
                failures[payload] = f"left the origin: {type(exc).__name__}: {exc}"
                continue
            if origin_of(result.url) != origin_of(stack.url) or result.status != 200:
                failures[payload] = f"ended on {result.url} with {result.status}"
            elif "pwned" in {c.key for c in browser.cookie_jar}:
                failures[payload] = "a header was injected"
    assert failures == {}
    assert len(stack.echo.seen) == len(REDIRECT_PAYLOADS)          # every login really reached the app
    assert stack.idp.count_grants("authorization_code") == len(REDIRECT_PAYLOADS)


async def test_unauthenticated_path_as_login_target_stays_on_origin(stack):
    """The gate stores the request's own path as the target: a path that looks like a host must not escape —
    neither through the login nor through the "Try again" link of an error page shown for that path."""
    for path in ("//evil.example/", "/\\evil.example", "//evil.example/%2F.."):
        async with loopback_browser() as browser:
            result = await login_via_http(browser, stack.url + path)
            assert origin_of(result.url) == origin_of(stack.url), (path, result.url)
    host = urlsplit(stack.url).netloc
    for path in ("//evil.example/%00", "/\\evil.example/%00", "//evil.example/%ff"):   # each a 400 page
        answer = await raw_exchange(stack.proxy.config.listen_port, (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n").encode())
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        for href in re.findall(rb'href="([^"]*)"', answer):
            link = html.unescape(href.decode())
            assert origin_of(urljoin(stack.url + "/", link)) == origin_of(stack.url), (path, link)
            assert not link.replace("\\", "/").startswith("//"), (path, link)


async def test_sign_out_leaves_only_for_the_provider_end_session_endpoint(stack):
    """With RP-initiated logout the provider is the only place a sign-out goes, and it comes back to
    ``/oauth2/signed_out`` (registered as post_logout_redirect_uri), whatever ``rd`` says."""
    end_session = stack.proxy.app[PROVIDER].metadata.end_session_endpoint
    assert end_session
    failures: dict[str, str] = {}
    for signed_in in (False, True):
        async with loopback_browser() as browser:
            if signed_in:
                assert (await login_via_http(browser, stack.url + "/")).status == 200
            for payload in REDIRECT_PAYLOADS:
                url = stack.url + "/oauth2/sign_out?" + urlencode({"rd": expand(payload, stack.url)})
                async with browser.get(url, headers=HTML, allow_redirects=False) as resp:
                    location = resp.headers.get("Location", "")
                    if resp.status != 302:
                        failures[f"{payload!r} signed_in={signed_in}"] = f"status {resp.status}"
                        continue
                if origin_of(location) == origin_of(stack.url):
                    continue
                query = parse_qs(urlsplit(location).query)
                if not location.startswith(end_session + "?") or "evil" in location.lower() \
                        or query.get("post_logout_redirect_uri") != [stack.url + "/oauth2/signed_out"]:
                    failures[f"{payload!r} signed_in={signed_in}"] = location
    assert failures == {}


async def test_sign_out_without_end_session_honours_only_same_origin_rd(evil_stack):
    """A provider without end_session_endpoint: the proxy redirects to ``rd`` itself — never off-origin."""
    stack = evil_stack
    assert stack.proxy.app[PROVIDER].metadata.end_session_endpoint is None
    failures: dict[str, str] = {}
    async with loopback_browser() as browser:
        for payload in REDIRECT_PAYLOADS:
            url = stack.url + "/oauth2/sign_out?" + urlencode({"rd": expand(payload, stack.url)})
            async with browser.get(url, headers=HTML, allow_redirects=False) as resp:
                location = resp.headers.get("Location", "")
                if resp.status != 302 or origin_of(location) != origin_of(stack.url):
                    failures[payload] = f"{resp.status} {location}"
        async with browser.get(stack.url + "/oauth2/sign_out?rd=%2Fback%3Fx%3D1", allow_redirects=False) as resp:
            assert resp.headers["Location"] == stack.url + "/back?x=1"
        async with browser.get(stack.url + "/oauth2/sign_out", allow_redirects=False) as resp:
            assert resp.headers["Location"] == stack.url + "/oauth2/signed_out"
    assert failures == {}


# -- cookies ---------------------------------------------------------------------------------------------------


def _flip(value: str, index: int) -> str:
    """Change one base64url character (so the decoded bytes differ in at least one bit)."""
    ch = value[index]
    return value[:index] + ("A" if ch != "A" else "B") + value[index + 1:]


def _bad_cookie_variants(stack: Any, good: dict[str, str], login_cookie: str) -> dict[str, list[tuple[str, str]]]:
    codec: CookieCodec = stack.proxy.app[CODEC]
    names = sorted(good, key=lambda n: int(n.rsplit("_", 1)[1]))
    assert len(names) >= 3, f"the big session should need at least three chunks, got {names}"
    first, middle, last = names[0], names[1], names[-1]
    session = codec.load(good)
    assert session is not None and session.identity.sub == "alice"
    other = CookieCodec(codec.config, Sealer([base64.urlsafe_b64decode(OTHER_SECRET)]), codec.clock)
    sealed_for_other_name = Sealer(codec.config.keys).seal(session.to_bytes(), b"_other")
    expired = replace(session, created_at=time.time() - codec.config.expire - 60)

    def with_(**changes: str | None) -> list[tuple[str, str]]:
        out = dict(good)
        for name, value in changes.items():
            if value is None:
                out.pop(name)
            else:
                out[name] = value
        return list(out.items())

    return {
        "bit flip in the first chunk": with_(**{first: _flip(good[first], 40)}),
        "bit flip in the version prefix": with_(**{first: "2" + good[first][1:]}),
        "bit flip in the key id": with_(**{first: _flip(good[first], 3)}),
        "bit flip in the last chunk": with_(**{last: _flip(good[last], len(good[last]) // 2)}),
        "truncated last chunk": with_(**{last: good[last][:-12]}),
        "chunks swapped": with_(**{first: good[middle], middle: good[first]}),
        "middle chunk missing": with_(**{middle: None}),
        "last chunk missing": with_(**{last: None}),
        "first chunk missing": with_(**{first: None}),
        "extra chunk appended": with_(**{f"_authproxy_{len(names)}": good[middle]}),
        "sealed with another secret": other.dump(session),
        "sealed for another cookie name": [("_authproxy", sealed_for_other_name)],
        "expired session replayed": codec.dump(expired),
        "login cookie replayed as the session": [("_authproxy", login_cookie)],
        "empty value": [("_authproxy", "")],
        "not base64": [("_authproxy", "1.!!!!not-base64!!!!")],
        "too short": [("_authproxy", "1.AAAA")],
        "garbage in chunk 0": [("_authproxy_0", "1." + "A" * 200)],
    }


async def test_tampered_cookies_are_a_signed_out_user(stack_factory, caplog):
    caplog.set_level(logging.INFO, logger="authproxy")
    stack = await stack_factory(idp_options={"extra_claims": {"filler": "x" * 4000}})
    authorize = stack.proxy.app[PROVIDER].metadata.authorization_endpoint
    async with loopback_browser() as browser:
        # Land on a page that needs no session: aiohttp's client jar leaves cookies out of a Cookie header
        # longer than 8190 octets, which this three-chunk session plus the provider's cookies exceeds.
        result = await login_via_http(browser, stack.url + "/oauth2/start?rd=%2Foauth2%2Fsigned_out")
        assert result.status == 200 and result.url == stack.url + "/oauth2/signed_out"
        good = session_cookies(browser)
        async with browser.get(stack.url + "/oauth2/start", headers=HTML, allow_redirects=False) as resp:
            login_cookie = next(v for k, v in set_cookie_values(resp).items() if k.startswith(LOGIN_PREFIX) and v)
    variants = _bad_cookie_variants(stack, good, login_cookie)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        # Control: the untouched cookies are alice's session.
        async with client.get(stack.url + "/control", headers={**API, "Cookie": cookie_header(good)}) as resp:
            assert resp.status == 200 and header_values(await resp.json(), "X-Forwarded-User") == ["alice"]
        forwarded = len(stack.echo.seen)
        failures: dict[str, str] = {}
        for label, cookies in variants.items():
            sent = {"Cookie": cookie_header(cookies)}
            async with client.get(stack.url + "/api", headers={**API, **sent}) as resp:
                body = await resp.text()
                set_values = set_cookie_values(resp)
                if resp.status != 401 or json.loads(body).get("error") != "unauthenticated":
                    failures[label] = f"API: {resp.status} {body[:200]}"
                elif any(SESSION_NAME.match(k) and v for k, v in set_values.items()):
                    failures[label] = f"API: a session cookie was set: {sorted(set_values)}"
            async with client.get(stack.url + "/page", headers={**HTML, **sent}, allow_redirects=False) as resp:
                if resp.status != 302 or not resp.headers.get("Location", "").startswith(authorize):
                    failures[label] = f"browser: {resp.status} {resp.headers.get('Location')}"
            async with client.get(stack.url + "/oauth2/userinfo", headers={**API, **sent}) as resp:
                if resp.status != 401:
                    failures[label] = f"userinfo: {resp.status}"
        assert failures == {}
        assert len(stack.echo.seen) == forwarded, "a tampered cookie reached the upstream"
        # A cookie that fails to open is cleared, and the reason logged.
        async with client.get(stack.url + "/api", headers={**API, "Cookie": cookie_header(
                variants["bit flip in the first chunk"])}) as resp:
            cleared = {k for k, v in set_cookie_values(resp).items() if not v}
            assert set(good) <= cleared
    assert any("session cookie ignored" in r.getMessage() for r in caplog.records if r.name.startswith("authproxy"))


ANOTHER_SHAPE = {
    "created_at as text": {"created_at": "yesterday"},
    "expires_at as text": {"expires_at": "soon", "refresh_token": None},
    "sub as a number": {"identity": {"sub": 42, "groups": []}},
    "groups as numbers": {"identity": {"sub": "alice", "groups": [1, 2]}},
}


async def test_sealed_cookie_of_another_shape_is_a_signed_out_user(stack):
    """Sealed with our key but not in today's shape — written by another version of authproxy, say after an
    upgrade was rolled back: still "a bad cookie", so a signed-out user whose cookie is cleared. A 500 here
    would repeat on every request until the cookie expired (cookie.expire, a week by default)."""
    codec: CookieCodec = stack.proxy.app[CODEC]
    base = json.loads(Session(identity=Identity(sub="alice"), access_token="at", created_at=time.time(),
                              id="v0").to_bytes())
    failures = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for label, changes in ANOTHER_SHAPE.items():
            sealed = stack.proxy.app[SEALER].seal(json.dumps({**base, **changes}).encode(), codec.name.encode())
            cookie = {"Cookie": f"_authproxy={sealed}"}
            async with client.get(stack.url + "/api", headers={**API, **cookie}) as resp:
                if resp.status != 401 or set_cookie_values(resp).get("_authproxy") != "":
                    failures[label] = f"API: {resp.status}, Set-Cookie {resp.headers.getall('Set-Cookie', [])}"
            async with client.get(stack.url + "/page", headers={**HTML, **cookie}, allow_redirects=False) as resp:
                if resp.status != 302:
                    failures[label] = failures.get(label, "") + f" browser: {resp.status}"
    assert failures == {}
    assert stack.echo.seen == []


async def test_oversized_cookie_header_is_a_clear_4xx(logged_in):
    stack, browser = logged_in
    forwarded = len(stack.echo.seen)
    big = cookie_header(session_cookies(browser)) + "; filler=" + "x" * 20_000
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.get(stack.url + "/", headers={**HTML, "Cookie": big}) as resp:
            assert resp.status in (400, 431)
    async with browser.get(stack.url + "/ping") as resp:
        assert resp.status == 200
    assert len(stack.echo.seen) == forwarded


# -- headers ---------------------------------------------------------------------------------------------------

SPOOFED = [
    ("X-Forwarded-User", "root"), ("X-Forwarded-User", "root2"), ("x-forwarded-user", "root3"),
    ("X-FORWARDED-EMAIL", "root@evil.example"), ("X-Forwarded-Groups", "admin"),
    ("X-Forwarded-Preferred-Username", "root"), ("X_Forwarded_User", "root"), ("x_forwarded_groups", "admin"),
    ("X-Forwarded_Email", "root@evil.example"), ("X_FORWARDED_PREFERRED_USERNAME", "root"),
    ("Authorization", "Bearer forged"), ("authorization", "Basic cm9vdDpyb290"), ("Proxy-Authorization", "Basic x"),
    ("X-Forwarded-Uri", "/admin"), ("X_Forwarded_Uri", "/admin"), ("X-Forwarded-Access-Token", "forged"),
    ("X-Auth-Request-User", "root"), ("X-Auth-Request-Email", "root@evil.example"),
    ("X-Auth-Request-Groups", "admin"), ("X-Auth-Request-Access-Token", "forged"),
    ("Forwarded", "for=6.6.6.6;host=evil.example;proto=https"), ("X-Real-IP", "6.6.6.6"),
    ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "6666"), ("X-Forwarded-Prefix", "/admin"),
]


async def test_client_identity_and_forwarding_headers_never_reach_the_upstream(logged_in):
    stack, browser = logged_in
    headers = CIMultiDict([*HTML.items(), *SPOOFED])
    async with browser.get(stack.url + "/spoof", headers=headers) as resp:
        assert resp.status == 200
        record = await resp.json()
    host = urlsplit(stack.url).netloc
    assert header_values(record, "X-Forwarded-User") == ["alice"]
    assert header_values(record, "X-Forwarded-Email") == ["alice@example.test"]
    assert header_values(record, "X-Forwarded-Groups") == ["staff,alice-group"]
    assert header_values(record, "X-Forwarded-Preferred-Username") == ["alice"]
    bearer = header_values(record, "Authorization")
    assert len(bearer) == 1 and bearer[0].startswith("Bearer ") and bearer[0] != "Bearer forged"
    assert header_values(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(record, "X-Forwarded-Host") == [host]
    assert header_values(record, "X-Forwarded-Proto") == ["http"]
    for name in ("X-Forwarded-Uri", "X-Forwarded-Access-Token", "X-Auth-Request-User", "X-Auth-Request-Email",
                 "X-Auth-Request-Groups", "X-Auth-Request-Access-Token", "Forwarded", "X-Real-IP",
                 "X-Forwarded-Port", "X-Forwarded-Prefix", "Proxy-Authorization"):
        assert header_values(record, name) == [], name
    leaked = [(k, v) for k, v in record["headers"] if any(s in v for s in ("root", "forged", "6.6.6.6", "evil"))]
    assert leaked == []


async def test_host_header_never_changes_the_redirect_uri(stack):
    expected = stack.url + "/oauth2/callback"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for extra in ({"Host": "evil.example"}, {"Host": "evil.example:80"},
                      {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
                      {"Forwarded": "host=evil.example;proto=https"}, {"Referer": "https://evil.example/page"},
                      {"Referer": f"{stack.url}@evil.example/page"}):
            for path in ("/oauth2/start?rd=%2F", "/some/page"):
                async with client.get(stack.url + path, headers={**HTML, **extra}, allow_redirects=False) as resp:
                    assert resp.status == 302, (extra, path)
                    query = parse_qs(urlsplit(resp.headers["Location"]).query)
                    assert query["redirect_uri"] == [expected], (extra, path)
            async with client.get(stack.url + "/api", headers={**API, **extra}) as resp:
                assert resp.status == 401
                assert (await resp.json())["login_url"].startswith(stack.url + "/oauth2/start?"), extra


# -- session fixation --------------------------------------------------------------------------------------------


async def test_planted_session_is_replaced_at_login(stack):
    """A valid session of "mallory", planted before login (say by a sibling subdomain), does not survive it."""
    codec: CookieCodec = stack.proxy.app[CODEC]
    planted = Session(identity=Identity(sub="mallory", email="mallory@example.test"), access_token="mallory-token",
                      created_at=time.time(), id="planted")
    async with loopback_browser() as browser:
        browser.cookie_jar.update_cookies(dict(codec.dump(planted)), URL(stack.url))
        async with browser.get(stack.url + "/before", headers=API) as resp:
            assert header_values(await resp.json(), "X-Forwarded-User") == ["mallory"]    # the plant is valid
        result = await login_via_http(browser, stack.url + "/oauth2/start?rd=%2Fafter", username="alice")
        assert result.status == 200
        record = json.loads(result.body_text)
        assert record["path"] == "/after"
        assert header_values(record, "X-Forwarded-User") == ["alice"]
        assert header_values(record, "Authorization") != ["Bearer mallory-token"]
        async with browser.get(stack.url + "/later", headers=API) as resp:
            assert header_values(await resp.json(), "X-Forwarded-User") == ["alice"]
        assert codec.load(session_cookies(browser)).identity.sub == "alice"


# -- request smuggling -------------------------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _smuggling_requests(host: str, cookie: str) -> dict[str, bytes]:
    head = f"Host: {host}\r\nCookie: {cookie}\r\nAccept: application/json\r\n"
    inner = f"GET /smuggled HTTP/1.1\r\n{head}\r\n"
    return {
        "CL and TE": (f"POST /outer HTTP/1.1\r\n{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                      f"0\r\n\r\n{inner}").encode(),
        "TE and CL": (f"POST /outer HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n"
                      f"0\r\n\r\n{inner}").encode(),
        "two different Content-Length": (f"POST /outer HTTP/1.1\r\n{head}Content-Length: 0\r\n"
                                         f"Content-Length: {len(inner)}\r\n\r\n{inner}").encode(),
        "two equal Content-Length": (f"POST /outer HTTP/1.1\r\n{head}Content-Length: 5\r\n"
                                     "Content-Length: 5\r\n\r\nhello").encode(),
        "Content-Length list": f"POST /outer HTTP/1.1\r\n{head}Content-Length: 5, 5\r\n\r\nhello".encode(),
        "obfuscated TE": (f"POST /outer HTTP/1.1\r\n{head}Transfer-Encoding: xchunked\r\n\r\n"
                          f"0\r\n\r\n{inner}").encode(),
        "TE with space before colon": (f"POST /outer HTTP/1.1\r\n{head}Transfer-Encoding : chunked\r\n\r\n"
                                       f"0\r\n\r\n{inner}").encode(),
        "two TE": (f"POST /outer HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"
                   f"\r\n0\r\n\r\n{inner}").encode(),
        "obs-fold": f"GET /outer HTTP/1.1\r\n{head}X-Folded: one\r\n two\r\n\r\n".encode(),
        "obs-fold hiding TE": (f"POST /outer HTTP/1.1\r\n{head}X-A: b\r\n Transfer-Encoding: chunked\r\n"
                               f"Content-Length: 4\r\n\r\n0\r\n\r\n").encode(),
        "bare LF line endings": f"GET /outer HTTP/1.1\n{head.replace(chr(13), '')}\n".encode(),
        "bare LF inside the headers": f"GET /outer HTTP/1.1\r\n{head}X-A: b\nX-B: c\r\n\r\n".encode(),
        "bare CR inside the headers": f"GET /outer HTTP/1.1\r\n{head}X-A: b\rX-B: c\r\n\r\n".encode(),
        "NUL in a header": f"GET /outer HTTP/1.1\r\n{head}X-A: a\x00b\r\n\r\n".encode(),
        "two Host headers": f"GET /outer HTTP/1.1\r\n{head}Host: evil.example\r\n\r\n".encode(),
    }


async def test_ambiguous_framing_is_rejected_before_the_upstream(logged_in):
    stack, browser = logged_in
    port = stack.proxy.config.listen_port
    host = urlsplit(stack.url).netloc
    cookie = cookie_header(session_cookies(browser))
    # Control: a well-formed request with the same cookie is forwarded, so a rejection below means the framing.
    control = f"GET /control HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n".encode()
    answer = await raw_exchange(port, control)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    seen = len(stack.echo.seen)
    assert stack.echo.seen[-1]["path"] == "/control"
    failures = {}
    for label, data in _smuggling_requests(host, cookie).items():
        answer = await raw_exchange(port, data)
        if not re.match(rb"HTTP/1\.[01] 400 ", answer):
            failures[label] = answer[:120]
    assert failures == {}
    await asyncio.sleep(0.05)
    assert [r["path"] for r in stack.echo.seen[seen:]] == []


# -- sizes -------------------------------------------------------------------------------------------------------


async def test_oversized_header_is_a_clear_4xx(stack):
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/", headers={**HTML, "X-Big": "y" * 20_000}) as resp:
            assert resp.status in (400, 431)
        async with client.get(stack.url + "/ping") as resp:
            assert resp.status == 200
    assert stack.echo.seen == []


async def test_login_state_cookies_stay_bounded(stack):
    """Many logins started in one browser (tabs, a reload loop) keep at most MAX_LOGIN_COOKIES, the newest."""
    states = []
    async with loopback_browser() as browser:
        for _ in range(MAX_LOGIN_COOKIES + 4):
            async with browser.get(stack.url + "/oauth2/start?rd=%2F", allow_redirects=False) as resp:
                assert resp.status == 302
                states.append(parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0])
            await asyncio.sleep(0.002)            # distinct creation times
        kept = {c.key.removeprefix(LOGIN_PREFIX) for c in browser.cookie_jar if c.key.startswith(LOGIN_PREFIX)}
        assert kept == set(states[-MAX_LOGIN_COOKIES:])
    # Junk login cookies (forged names, values that do not open) are cleared by the next start.
    junk = [(f"{LOGIN_PREFIX}junk{i}", "1.AAAA") for i in range(10)]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.get(stack.url + "/oauth2/start", headers={"Cookie": cookie_header(junk)},
                              allow_redirects=False) as resp:
            values = set_cookie_values(resp)
    assert all(values.get(name) == "" for name, _ in junk)
    assert len([k for k, v in values.items() if k.startswith(LOGIN_PREFIX) and v]) == 1


# -- routing ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def two_upstreams(stack_factory) -> AsyncIterator[tuple[Any, EchoServer, EchoServer, str]]:
    """A proxy routing ``/public`` to one echo server and everything else to another, with alice signed in."""
    public_echo, root_echo = await start_echo(free_port()), await start_echo(free_port())
    try:
        stack = await stack_factory(upstreams=[{"path": "/public", "url": public_echo.url},
                                               {"path": "/", "url": root_echo.url}])
        async with loopback_browser() as browser:
            assert (await login_via_http(browser, stack.url + "/")).status == 200
            cookie = cookie_header(session_cookies(browser))
        yield stack, public_echo, root_echo, cookie
    finally:
        await public_echo.close()
        await root_echo.close()


ROUTING_TARGETS = [
    "/public/x", "/other", "/public/../secret", "/public/%2e%2e/secret", "/public%2F..%2Fsecret",
    "/public/..%2Fsecret", "/public/.%2E/secret", "/public\\..\\secret", "/x/../public/y", "/x/%2e%2e/public/y",
    "/publicity", "/public%2Fy", "//public/y", "/./public/y",
]


async def test_an_upstream_only_receives_paths_under_its_prefix(two_upstreams):
    """Routing and forwarding must agree on one path: ``/public/../secret`` is ``/secret``, which belongs to the
    "/" upstream — sending it to the "/public" one (or ``/x/../public/y`` to "/") crosses apps, and with them
    any path rule that trusted the routing."""
    stack, public_echo, root_echo, cookie = two_upstreams
    host = urlsplit(stack.url).netloc
    failures = {}
    for target in ROUTING_TARGETS:
        public_before, root_before = len(public_echo.seen), len(root_echo.seen)
        request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nAccept: application/json\r\n"
                   "Connection: close\r\n\r\n").encode()
        answer = await raw_exchange(stack.proxy.config.listen_port, request)
        got_public, got_root = public_echo.seen[public_before:], root_echo.seen[root_before:]
        if len(got_public) + len(got_root) != 1:
            if not answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404")):
                failures[target] = f"reached {len(got_public)}+{len(got_root)} upstreams: {answer[:80]!r}"
            continue
        path = (got_public or got_root)[0]["path"]
        under_public = path == "/public" or path.startswith("/public/")
        if got_public and not under_public:
            failures[target] = f"the /public upstream received {path!r}"
        if got_root and under_public:
            failures[target] = f"the / upstream received {path!r}, which belongs to /public"
    assert failures == {}

