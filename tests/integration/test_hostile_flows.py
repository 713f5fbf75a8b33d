"""The login and redirect flows, attacked by someone who has read ``login.py``: the real oidc-provider, echo
upstream and proxy, driven by scripts posing as one or more browsers.

- many tabs: two logins at once each come back to their own page; a callback replayed in another tab, or
  after success, is a clean 403 that leaves the session alone; one tab's login expiring while another
  completes;
- login CSRF: an attacker's own ``code`` and ``state`` delivered to a victim's browser, and an attacker's
  code paired with the victim's ``state`` (PKCE stops it at the provider);
- session fixation with server-side sessions, and a sign-in as someone else replacing the session;
- the authorization response: repeated parameters (RFC 6749 §3.1), ``iss`` checked on error responses too
  (RFC 9207), an error response whose text is the attacker's (escaped, bounded, plain text only, and never
  shown without the browser's own state);
- CORS on the proxy's own endpoints, from hostile origins and ``Origin: null``;
- HTTP/1.0, a missing or hostile ``Host`` and absolute-form targets at ``/oauth2/start`` and the callback:
  ``redirect_uri`` and every ``Location`` come from ``public_url`` only;
- ``cookie.samesite: strict``: the page that replaces the redirect after sign-in links only to our origin.

Open redirects through ``rd`` itself are in test_hostile_browser.py (through a whole login) and
tests/e2e/test_browser_flows.py (against chromium's own URL parser).
"""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import pytest
from yarl import URL

from proxy.context import PROVIDER
from proxy.errors import ConfigError
from proxy.login import LOGIN_TTL
from proxy.session import CODEC
from tests.integration.test_hostile_browser import (
    API,
    HTML,
    LOGIN_PREFIX,
    cookie_header,
    loopback_browser,
    origin_of,
    raw_exchange,
    session_cookies,
    set_cookie_values,
)
from tests.integration.test_redis_sessions import redis_section
from tests.support.browserless import authorization_response_via_http, login_via_http
from tests.support.echo import header_values
from tests.unit.conftest import make_config

pytestmark = pytest.mark.integration

REQUEST_ID = re.compile(r"Request id: <code>([^<]+)</code>")


async def authorize_url(browser: aiohttp.ClientSession, stack: Any, rd: str) -> str:
    """Start a login in ``browser`` (its login cookie kept) and return where it would go at the provider."""
    async with browser.get(stack.url + "/oauth2/start?" + urlencode({"rd": rd}), headers=HTML,
                           allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, pairs: list[tuple[str, str]]) -> str:
    return urlsplit(url)._replace(query=urlencode(pairs)).geturl()


async def arrive(browser: aiohttp.ClientSession, url: str, headers: dict[str, str] = HTML) -> tuple[int, str, str]:
    """GET ``url`` without following: (status, Location, body)."""
    async with browser.get(url, headers=headers, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def who(browser: aiohttp.ClientSession, stack: Any, path: str = "/whoami") -> list[str]:
    """The user the upstream is told about for a request from ``browser`` ([] when none reaches it)."""
    async with browser.get(stack.url + path, headers=API) as resp:
        if resp.status != 200:
            return []
        return header_values(await resp.json(), "X-Forwarded-User")


def assert_clean_page(status: int, body: str, expected: int) -> None:
    """The proxy's own error page: the status, HTML with a request id — never a 500 or a traceback."""
    assert status == expected, (status, body[:300])
    assert REQUEST_ID.search(body), body[:300]
    assert "Traceback" not in body


# -- many tabs ---------------------------------------------------------------------------------------------------


async def test_two_tabs_signing_in_at_once_each_land_on_their_own_target(stack):
    """Both logins are started before either reaches the provider, and come back in the other order: each
    callback finds its own login cookie and target, and clears only that cookie."""
    async with loopback_browser() as browser:
        to_a = await authorize_url(browser, stack, "/tab-a?n=1")
        to_b = await authorize_url(browser, stack, "/tab-b")
        assert len({c.key for c in browser.cookie_jar if c.key.startswith(LOGIN_PREFIX)}) == 2
        back_a = await authorization_response_via_http(browser, to_a)       # signs in at the provider
        back_b = await authorization_response_via_http(browser, to_b)       # the provider remembers
        assert query_of(back_a)["state"] == query_of(to_a)["state"] != query_of(back_b)["state"]

        async with browser.get(back_b, headers=HTML, allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (302, stack.url + "/tab-b")
            assert resp.headers["Referrer-Policy"] == "no-referrer"       # the code stays out of Referer
        status, location, _ = await arrive(browser, back_a)
        assert (status, location) == (302, stack.url + "/tab-a?n=1")
        assert not [c.key for c in browser.cookie_jar if c.key.startswith(LOGIN_PREFIX) and c.value]
        assert await who(browser, stack) == ["alice"]
    assert stack.idp.count_grants("authorization_code") == 2


async def test_callback_replayed_after_success_is_refused_and_keeps_the_session(stack):
    """Tab B replays tab A's callback after A signed in (history, a reload, a pasted link): a 403 page,
    the code is not sent to the provider again, and the session A made goes on untouched."""
    async with loopback_browser() as browser:
        callback = await authorization_response_via_http(browser, stack.url + "/oauth2/start?rd=%2Ffirst")
        status, location, _ = await arrive(browser, callback)
        assert (status, location) == (302, stack.url + "/first")
        signed_in = session_cookies(browser)
        await authorize_url(browser, stack, "/second")          # another tab's login is pending meanwhile
        async with browser.get(callback, headers=HTML, allow_redirects=False) as resp:
            assert_clean_page(resp.status, await resp.text(), 403)
            assert not [k for k in set_cookie_values(resp) if k.startswith("_authproxy") and
                        not k.startswith(LOGIN_PREFIX)]
        assert session_cookies(browser) == signed_in
        assert await who(browser, stack) == ["alice"]
    assert stack.idp.count_grants("authorization_code", ok=None) == 1


async def test_one_tabs_expired_login_does_not_spoil_another(stack_factory):
    """Tab A started a login 11 minutes ago and tab B one 4 minutes ago: A's callback is a clean 403 that
    spends nothing, B's signs in and lands on B's page."""
    offset = {"s": 0.0}
    stack = await stack_factory(clock=lambda: time.time() + offset["s"])
    async with loopback_browser() as browser:
        to_a = await authorize_url(browser, stack, "/tab-a")
        offset["s"] = LOGIN_TTL - 240
        to_b = await authorize_url(browser, stack, "/tab-b")
        back_a = await authorization_response_via_http(browser, to_a)
        back_b = await authorization_response_via_http(browser, to_b)
        offset["s"] = LOGIN_TTL + 60
        status, _, body = await arrive(browser, back_a)
        assert_clean_page(status, body, 403)
        assert "older than 10 minutes" in html.unescape(body)
        assert stack.idp.count_grants("authorization_code", ok=None) == 0
        status, location, _ = await arrive(browser, back_b)
        assert (status, location) == (302, stack.url + "/tab-b")
        assert await who(browser, stack) == ["alice"]
    assert stack.idp.count_grants("authorization_code") == 1


async def test_non_ascii_target_comes_back_as_a_browser_encodes_it(stack):
    """``/oauth2/start?rd=/wiki/Café`` (a link typed or built without encoding the path: chromium sends the
    query UTF-8 percent-encoded, and it arrives decoded) returns to that page, percent-encoded as a browser
    would request it — not to the start page."""
    async with loopback_browser() as browser:
        result = await login_via_http(browser, stack.url + "/oauth2/start?" + urlencode({"rd": "/wiki/Café?q=ü"}))
    assert result.status == 200 and result.url == stack.url + "/wiki/Caf%C3%A9?q=%C3%BC"
    assert json.loads(result.body_text)["raw_path"] == "/wiki/Caf%C3%A9?q=%C3%BC"


# -- login CSRF ----------------------------------------------------------------------------------------------------


async def test_attackers_own_callback_does_not_sign_the_victim_in(stack):
    """Login CSRF (RFC 6749 §10.12): mallory signs in at the provider herself and, instead of finishing,
    sends her callback URL to the victim. The victim's browser has no login cookie for mallory's state —
    whether signed out, signed in as alice, or in the middle of a login of its own — so the answer is a 403
    and mallory's code is never redeemed."""
    async with loopback_browser() as attacker:
        planted = await authorization_response_via_http(attacker, stack.url + "/oauth2/start?rd=%2Fmine",
                                                        username="mallory")
    async with loopback_browser() as victim:
        status, _, body = await arrive(victim, planted)
        assert_clean_page(status, body, 403)
        assert session_cookies(victim) == {}
        assert (await login_via_http(victim, stack.url + "/as-alice")).status == 200
        await authorize_url(victim, stack, "/pending")              # a login of its own in flight too
        status, _, body = await arrive(victim, planted)
        assert_clean_page(status, body, 403)
        assert await who(victim, stack) == ["alice"]
    assert stack.idp.count_grants("authorization_code", ok=None) == 1            # alice's only
    assert all(header_values(r, "X-Forwarded-User") != ["mallory"] for r in stack.echo.seen)


async def test_attackers_code_with_the_victims_state_is_refused_by_pkce(stack):
    """Code injection (RFC 9700 §4.5): even an attacker who learnt the victim's ``state`` can only pair it
    with a code issued for their own login, whose PKCE challenge the victim's verifier does not answer —
    the provider refuses it, the page is a clean error, no session is made and the victim's state is spent."""
    async with loopback_browser() as attacker:
        stolen = await authorization_response_via_http(attacker, stack.url + "/oauth2/start?rd=%2Fmine",
                                                       username="mallory")
    async with loopback_browser() as victim:
        to_provider = await authorize_url(victim, stack, "/victim")
        forged = with_query(stolen, [("code", query_of(stolen)["code"]), ("state", query_of(to_provider)["state"]),
                                     ("iss", query_of(stolen)["iss"])])
        status, _, body = await arrive(victim, forged)
        assert_clean_page(status, body, 502)
        assert "invalid_grant" in html.unescape(body)
        assert session_cookies(victim) == {}
        status, _, body = await arrive(victim, forged)               # the victim's state was single-use
        assert_clean_page(status, body, 403)
    assert stack.idp.count_grants("authorization_code", ok=True) == 0
    assert stack.idp.count_grants("authorization_code", ok=False) == 1
    assert stack.echo.seen == []


# -- session fixation and switching users ------------------------------------------------------------------------


async def test_planted_server_side_session_is_not_taken_over_at_login(stack_factory, redis_server):
    """With sessions in Redis the cookie is only a ticket. Mallory plants her own valid ticket in the victim's
    browser; the victim signs in as alice. Were the ticket kept and its record overwritten, mallory's copy
    would now open alice's session. It must get a new ticket, and mallory's copy must stay mallory's."""
    stack = await stack_factory(session=redis_section(redis_server.url))
    async with loopback_browser() as attacker:
        assert (await login_via_http(attacker, stack.url + "/mine", username="mallory")).status == 200
        ticket = session_cookies(attacker)
    assert ticket
    async with loopback_browser() as victim:
        victim.cookie_jar.update_cookies(ticket, URL(stack.url))
        assert await who(victim, stack) == ["mallory"]                    # the plant works before login
        result = await login_via_http(victim, stack.url + "/oauth2/start?rd=%2Fafter", username="alice")
        assert result.status == 200 and json.loads(result.body_text)["path"] == "/after"
        assert await who(victim, stack) == ["alice"]
        assert session_cookies(victim) != ticket
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.get(stack.url + "/mallory-again", headers={**API, "Cookie": cookie_header(ticket)}) as resp:
            assert resp.status == 200
            assert header_values(await resp.json(), "X-Forwarded-User") == ["mallory"]


async def test_signing_in_as_someone_else_replaces_the_session(stack):
    """Signed in as alice here while the provider's session became bob's (signed out and in again there): the
    next login is bob's, the session is replaced whole, and nothing of alice's reaches the upstream again."""
    codec = stack.proxy.app[CODEC]
    async with loopback_browser() as browser:
        assert (await login_via_http(browser, stack.url + "/as-alice")).status == 200
        alice = codec.load(session_cookies(browser))
        browser.cookie_jar.clear(lambda morsel: not morsel.key.startswith("_authproxy"))    # the provider's
        result = await login_via_http(browser, stack.url + "/oauth2/start?rd=%2Fas-bob", username="bob")
        assert result.status == 200
        record = json.loads(result.body_text)
        assert record["path"] == "/as-bob" and header_values(record, "X-Forwarded-User") == ["bob"]
        bob = codec.load(session_cookies(browser))
        assert bob.identity.sub == "bob" and bob.id != alice.id and bob.access_token != alice.access_token
        assert header_values(record, "Authorization") == [f"Bearer {bob.access_token}"]
        assert await who(browser, stack) == ["bob"]


# -- the authorization response ----------------------------------------------------------------------------------


REPEATED = {
    "iss appended": lambda q: [*q.items(), ("iss", "http://127.0.0.1:1/evil")],
    "iss prepended": lambda q: [("iss", q["iss"]), *q.items()],
    "state twice": lambda q: [*q.items(), ("state", "other")],
    "code twice": lambda q: [*q.items(), ("code", "injected")],
    "error twice": lambda q: [("state", q["state"]), ("error", "access_denied"), ("error", "server_error")],
}


@pytest.mark.parametrize("label", sorted(REPEATED))
async def test_repeated_authorization_response_parameters_are_refused(stack, label):
    """RFC 6749 §3.1: response parameters must not be repeated. With two ``iss``, ``state`` or ``code``
    which one counts is up to the reader; an attacker who can append one must not get a say. The response is
    refused before the code is spent, with a clean page, and no session."""
    async with loopback_browser() as browser:
        callback = await authorization_response_via_http(browser, stack.url + "/oauth2/start?rd=%2Fx")
        status, _, body = await arrive(browser, with_query(callback, REPEATED[label](query_of(callback))))
        assert_clean_page(status, body, 400)
        assert "more than once" in html.unescape(body)
        assert session_cookies(browser) == {}
    assert stack.idp.count_grants("authorization_code", ok=None) == 0


async def test_callback_with_another_or_no_iss_from_the_real_provider_is_refused(stack):
    """RFC 9207 with the real oidc-provider, which sends ``iss`` and says so in its metadata: an
    authorization response naming another issuer, or none, is refused before the code is spent."""
    assert stack.proxy.app[PROVIDER].metadata.authorization_response_iss_parameter_supported
    for iss in ("http://127.0.0.1:1/other", None):
        async with loopback_browser() as browser:
            callback = await authorization_response_via_http(browser, stack.url + "/oauth2/start?rd=%2Fx")
            query = query_of(callback)
            assert query["iss"] == stack.idp.issuer
            pairs = [(k, v) for k, v in query.items() if k != "iss"] + ([("iss", iss)] if iss else [])
            status, _, body = await arrive(browser, with_query(callback, pairs))
            assert_clean_page(status, body, 502)
            assert "(iss)" in html.unescape(body)
            assert session_cookies(browser) == {}
    assert stack.idp.count_grants("authorization_code", ok=None) == 0


async def real_error_response(browser: aiohttp.ClientSession, stack: Any) -> str:
    """The real provider's error response: start a login, press the login page's cancel ("abort") link, and
    return where the provider sends the browser back (not followed)."""
    url = await authorize_url(browser, stack, "/x")
    for _ in range(6):
        async with browser.get(url, headers=HTML, allow_redirects=False) as resp:
            location, body = resp.headers.get("Location"), await resp.text()
        if location is None:
            abort = re.search(r'href="([^"]*/abort)"', body)
            assert abort, body[:300]
            location = abort.group(1)
        url = urljoin(url, location)
        if urlsplit(url).path == "/oauth2/callback":
            return url
    raise AssertionError(f"the provider never sent the browser back: {url}")


async def test_error_response_from_the_real_provider_is_a_clean_denial(stack):
    """The user cancels at oidc-provider: its error response carries ``iss`` (RFC 9207 §2) and becomes a
    403 page saying the provider did not grant access, with its plain-text description."""
    async with loopback_browser() as browser:
        callback = await real_error_response(browser, stack)
        query = query_of(callback)
        assert query["error"] == "access_denied" and query["iss"] == stack.idp.issuer
        status, _, body = await arrive(browser, callback)
    assert_clean_page(status, body, 403)
    assert "(access_denied): End-User aborted interaction." in html.unescape(body)


@pytest.mark.parametrize("iss", ["http://127.0.0.1:1/mix-up", None], ids=["another-issuer", "no-iss"])
async def test_error_response_from_another_issuer_is_refused_as_a_mix_up(stack, iss):
    """RFC 9207 §2.4 covers error responses too: one naming another issuer (or none, from a provider that
    promises iss) is the mix-up attacker's, so the page says the security check failed — and never shows
    that issuer's text as if our provider had said it."""
    async with loopback_browser() as browser:
        callback = await real_error_response(browser, stack)
        pairs = [(k, v) for k, v in query_of(callback).items() if k not in ("iss", "error_description")]
        pairs += [("error_description", "Your account is locked. Call +1-555-0100.")] + ([("iss", iss)] if iss else [])
        status, _, body = await arrive(browser, with_query(callback, pairs))
    assert_clean_page(status, body, 502)
    shown = html.unescape(re.sub(r"<[^>]*>", "", body))         # the text, not the links' URLs
    assert "(iss)" in shown and "555" not in shown and "did not grant access" not in shown


HOSTILE_DESCRIPTION = "<script>alert(1)</script><img src=x onerror=alert(1)> Call +1-555-0100 now. " + "x" * 6000


async def test_error_response_text_is_escaped_bounded_and_needs_the_browsers_state(stack):
    """An error response (RFC 6749 §4.1.2.1) carries text: shown on our origin it is escaped and cut short,
    and a callback crafted by someone else — no login cookie for its state — shows none of it."""
    async with loopback_browser() as browser:
        to_provider = await authorize_url(browser, stack, "/x")
        state = query_of(to_provider)["state"]
        crafted = stack.url + "/oauth2/callback?" + urlencode({
            "state": state, "iss": stack.idp.issuer, "error": "access_denied<b>",
            "error_description": HOSTILE_DESCRIPTION})
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as stranger:
            status, _, body = await arrive(stranger, crafted)
            assert_clean_page(status, body, 403)
            assert "alert" not in body and "555" not in body and "access_denied" not in body
        status, _, body = await arrive(browser, crafted)
    assert_clean_page(status, body, 403)
    assert "<script" not in body and "<img" not in body and "<b>" not in body
    assert "&lt;script&gt;" in body and "&lt;b&gt;" in body
    text = html.unescape(body)
    assert "access_denied<b>" in text
    assert "x" * 200 not in text and len(body) < 6000
    async with loopback_browser() as browser:
        state = query_of(await authorize_url(browser, stack, "/x"))["state"]
        status, _, body = await arrive(browser, stack.url + "/oauth2/callback?" + urlencode({
            "state": state, "iss": stack.idp.issuer, "error": "access_denied", "error_description": "y" * 20_000}))
    assert status in (400, 414), (status, body[:200])       # too long a request line: aiohttp's own refusal
    async with aiohttp.ClientSession() as client, client.get(stack.url + "/ping") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("description", [
    "Denied.\r\n2026-01-01 00:00:00 INFO authproxy forged log line",
    "Your account is \u202edekcol\u202c: call +1-555-0100",
    "Denied \u0430ccess",
    'quote " and backslash \\',
], ids=["crlf", "bidi-override", "look-alike", "quote-backslash"])
async def test_error_response_text_outside_rfc6749_is_not_shown(stack, proxy_records, description):
    """RFC 6749 §4.1.2.1 limits ``error_description`` to printable ASCII without '"' and '\\': anything else
    (line breaks for the log, right-to-left overrides and look-alike letters for the page) is left out, and
    the page still says what happened."""
    async with loopback_browser() as browser:
        state = query_of(await authorize_url(browser, stack, "/x"))["state"]
        crafted = stack.url + "/oauth2/callback?" + urlencode({
            "state": state, "iss": stack.idp.issuer, "error": "access_denied", "error_description": description})
        status, _, body = await arrive(browser, crafted)
        assert_clean_page(status, body, 403)
        text = html.unescape(body)
        assert "(access_denied)" in text
        assert description not in text
        assert "555" not in text and "forged" not in text and "backslash" not in text
        status, _, body = await arrive(browser, stack.url + "/oauth2/callback?" + urlencode({
            "state": query_of(await authorize_url(browser, stack, "/y"))["state"], "iss": stack.idp.issuer,
            "error": "denied\r\nX: 1"}))
        assert_clean_page(status, body, 403)
        assert "not plain text" in html.unescape(body)
    logged = "\n".join(proxy_records())
    assert "forged" not in logged and "\u202e" not in logged and "X: 1" not in logged


@pytest.fixture
def proxy_records(caplog: pytest.LogCaptureFixture):
    caplog.set_level("INFO", logger="authproxy")
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("authproxy")]


# -- CORS on the proxy's own endpoints -----------------------------------------------------------------------------

FRONT = "http://front.example"
HOSTILE_ORIGINS = [
    "http://evil.example", "null", "http://front.example.evil.example", "http://evil-front.example",
    "http://front.example:8080", "https://front.example", "http://front.example/", f"{FRONT} http://evil.example",
    "*", "http://front.example.", "http://xn--frnt-0qa.example",
]


async def test_proxy_endpoints_never_grant_hostile_origins(stack_factory):
    """With ``cors.allowed_origins`` set and credentials allowed, a signed-in user's browser visiting a
    hostile page: userinfo, auth, the 401 of the gate and the login start never name another origin, never
    ``*``, never ``null`` — so the page cannot read who the user is."""
    stack = await stack_factory(cors={"allowed_origins": [FRONT], "allow_credentials": True},
                                api_paths=["/api"])
    async with loopback_browser() as browser:
        assert (await login_via_http(browser, stack.url + "/")).status == 200
        signed_in = cookie_header(session_cookies(browser))
    failures: dict[str, str] = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for origin in HOSTILE_ORIGINS:
            for method, path, cookie in (("GET", "/oauth2/userinfo", signed_in), ("GET", "/oauth2/auth", signed_in),
                                         ("GET", "/api/x", ""), ("GET", "/oauth2/start?rd=%2F", ""),
                                         ("OPTIONS", "/oauth2/userinfo", signed_in), ("OPTIONS", "/api/x", "")):
                headers = {**API, "Origin": origin, "Access-Control-Request-Method": "GET",
                           **({"Cookie": cookie} if cookie else {})}
                async with client.request(method, stack.url + path, headers=headers, allow_redirects=False) as resp:
                    granted = {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-allow")}
                    if granted or resp.status == 500:
                        failures[f"{origin} {method} {path}"] = f"{resp.status} {granted}"
        # Control: the allowed origin can read the gate's 401, with credentials, and caches vary on Origin.
        async with client.get(stack.url + "/api/x", headers={**API, "Origin": FRONT}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == FRONT
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in resp.headers["Vary"]
    assert failures == {}


@pytest.mark.parametrize("origin", ["null", "*", "file://", "http://front.example/app"])
def test_wildcard_and_null_origins_are_refused_at_start_up(origin):
    """``Origin: null`` is what sandboxed iframes, file: and data: pages send — anyone can make one — and
    ``*`` with credentials is what the CORS protocol forbids: neither may be configured. (An origin is
    compared as a whole string, so "http://*.example.com" would only ever match itself.)"""
    with pytest.raises(ConfigError) as caught:
        make_config(cors={"allowed_origins": [origin]})
    assert "cors.allowed_origins" in str(caught.value)


# -- HTTP/1.0, no Host, hostile Host and absolute-form targets ------------------------------------------------------


def _location(answer: bytes) -> str:
    match = re.search(rb"\r\nLocation: ([^\r\n]*)", answer)
    assert match, answer[:300]
    return match.group(1).decode()


def _head_ok(answer: bytes, status: int) -> bool:
    return re.match(rb"HTTP/1\.[01] %d " % status, answer) is not None


async def test_login_start_takes_redirect_uri_from_public_url_only(stack):
    port, host = stack.proxy.config.listen_port, urlsplit(stack.url).netloc
    expected = stack.url + "/oauth2/callback"
    heads = {
        "HTTP/1.0 without Host": "GET {path} HTTP/1.0\r\nAccept: text/html\r\n\r\n",
        "HTTP/1.0 with a hostile Host": "GET {path} HTTP/1.0\r\nHost: evil.example\r\nAccept: text/html\r\n\r\n",
        "HTTP/1.1 with an empty Host": ("GET {path} HTTP/1.1\r\nHost: \r\nAccept: text/html\r\n"
                                        "Connection: close\r\n\r\n"),
        "absolute-form naming another host": ("GET http://evil.example{path} HTTP/1.1\r\nHost: evil.example\r\n"
                                              "Accept: text/html\r\nConnection: close\r\n\r\n"),
        "absolute-form naming us, Host another": (f"GET http://{host}{{path}} HTTP/1.1\r\nHost: evil.example\r\n"
                                                  "Accept: text/html\r\nConnection: close\r\n\r\n"),
    }
    failures = {}
    for label, head in heads.items():
        for path in ("/oauth2/start?rd=%2Fx", "/deep/page"):
            answer = await raw_exchange(port, head.format(path=path).encode())
            if _head_ok(answer, 400):
                continue                                  # refusing an ambiguous request is fine too
            if not _head_ok(answer, 302):
                failures[f"{label} {path}"] = answer[:120]
                continue
            query = query_of(_location(answer))
            if query.get("redirect_uri") != expected:
                failures[f"{label} {path}"] = _location(answer)
    answer = await raw_exchange(port, b"GET /api HTTP/1.0\r\nAccept: application/json\r\n\r\n")
    assert _head_ok(answer, 401), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["login_url"].startswith(stack.url + "/oauth2/start?")
    assert failures == {}


@pytest.mark.parametrize("head", [
    "GET {target} HTTP/1.0\r\nCookie: {cookie}\r\nAccept: text/html\r\n\r\n",
    "GET http://evil.example{target} HTTP/1.1\r\nHost: evil.example\r\nCookie: {cookie}\r\nAccept: text/html\r\n"
    "Connection: close\r\n\r\n",
], ids=["http1.0-no-host", "absolute-form-hostile-host"])
async def test_callback_without_a_usable_host_sends_the_browser_to_public_url(stack, head):
    """The callback completes over HTTP/1.0 without ``Host`` or with another host in the target, and sends
    the browser to ``public_url``'s origin: the code exchange used the registered redirect_uri."""
    async with loopback_browser() as browser:
        callback = await authorization_response_via_http(browser, stack.url + "/oauth2/start?rd=%2Fback%3Fq%3D1")
        login = [(c.key, c.value) for c in browser.cookie_jar if c.key.startswith(LOGIN_PREFIX)]
    parts = urlsplit(callback)
    request = head.format(target=f"{parts.path}?{parts.query}", cookie=cookie_header(login))
    answer = await raw_exchange(stack.proxy.config.listen_port, request.encode())
    assert _head_ok(answer, 302), answer[:300]
    assert _location(answer) == stack.url + "/back?q=1"
    assert re.search(rb"\r\nSet-Cookie: _authproxy=[^;\r\n]+", answer)
    assert stack.idp.count_grants("authorization_code") == 1


# -- cookie.samesite: strict ---------------------------------------------------------------------------------------


async def test_strict_cookie_sign_in_page_links_only_to_our_origin(stack_factory):
    """With ``samesite: strict`` the callback answers a page (meta refresh and a link) instead of a redirect,
    so the target ends up in HTML: every URL in it is the safe target, on our origin, and nothing else."""
    stack = await stack_factory(cookie={"samesite": "strict"})
    cases = {"/ok?a=1&b=2": stack.url + "/ok?a=1&b=2", '/x"><script>alert(1)</script>': stack.url + "/",
             "/x';alert(1)//": stack.url + "/x';alert(1)//", "//evil.example/": stack.url + "/",
             "javascript:alert(1)": stack.url + "/"}
    for rd, expected in cases.items():
        async with loopback_browser() as browser:
            callback = await authorization_response_via_http(browser, stack.url + "/oauth2/start?" +
                                                             urlencode({"rd": rd}))
            status, _, body = await arrive(browser, callback)
        assert status == 200, (rd, body[:200])
        assert "<script" not in body
        urls = [html.unescape(u) for u in re.findall(r'(?:url=|href=")([^">]*)', body)]
        assert urls == [expected, expected], (rd, urls)
        assert all(origin_of(u) == origin_of(stack.url) for u in urls)
