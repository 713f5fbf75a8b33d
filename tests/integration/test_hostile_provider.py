"""A provider that lies: every bad answer is refused cleanly, and the proxy keeps working afterwards.

Each test signs in through authproxy at ``tests/support/evil_idp.py`` set to one misbehaviour (the OpenID
Connect RP certification tests and RFC 9700 name them) and checks the same four things:

1. no session cookie reaches the browser;
2. the answer is a clean error page — 4xx/5xx but never 500, HTML with the request id — that names the
   check that failed;
3. the proxy's log names the reason, on the line carrying that request id;
4. the proxy stays up: ``/ping`` answers, and a login with the provider switched back to "good" works.

Then the callback's own guards: ``state`` missing, wrong or replayed, and a spent ``code`` injected into a
fresh login. And what must keep working: key rotation, a token without ``kid`` when the JWKS has one key,
a refresh answer without a new ID token.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from proxy.context import PROVIDER
from proxy.session import CODEC
from tests.support.browserless import LoginResult, login_via_http
from tests.support.echo import header_values
from tests.support.evil_idp import BAD_ID_TOKEN_MODES, BAD_MODES, EvilStack, start_evil_stack

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html,application/xhtml+xml"}
API = {"Accept": "application/json"}
SESSION_COOKIE = re.compile(r"^_authproxy(?:_\d+)?=([^;]*)")
REQUEST_ID = re.compile(r"Request id: <code>([^<]+)</code>")

# mode -> the check the error page and the log line must name (the TokenValidationError code in parentheses).
ID_TOKEN_CHECKS = {
    "unknown_key": "(kid)",
    "alg_none": "(alg)",
    "hs256_client_secret": "(alg)",
    "iss_mismatch": "(iss)",
    "aud_other": "(aud)",
    "multi_aud_no_azp": "(azp)",
    "nonce_missing": "(nonce)",
    "nonce_wrong": "(nonce)",
    "exp_past": "(exp)",
    "iat_missing": "(iat)",
    "iat_future": "(iat)",
    "sub_missing": "(sub)",
    "kid_absent_two_keys": "(kid)",
}
# mode -> what the page and the log must say about the token endpoint's answer.
TOKEN_ENDPOINT_CHECKS = {
    "token_http_500": "token exchange: it answered HTTP 500",
    "token_html": "token exchange: it answered HTTP 200 with something that is not a JSON object",
    "token_invalid_json": "token exchange: it answered HTTP 200 with something that is not a JSON object",
    "token_type_mac": "token_type is 'mac'",
}

EvilFactory = Callable[..., Awaitable[EvilStack]]


@pytest.fixture
async def evil_factory() -> AsyncIterator[EvilFactory]:
    """``await evil_factory(**start_evil_stack options)``; everything started is stopped after the test."""
    started: list[EvilStack] = []

    async def factory(**options: Any) -> EvilStack:
        stack = await start_evil_stack(**options)
        started.append(stack)
        return stack

    yield factory
    for stack in started:
        await stack.close()


@pytest.fixture
def proxy_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="authproxy")
    return caplog


def browser() -> aiohttp.ClientSession:
    """A cookie-keeping client for 127.0.0.1 (the default jar ignores cookies of IP addresses)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def session_cookies_in(set_cookies: Iterable[str]) -> list[str]:
    """The session cookies (``_authproxy``, ``_authproxy_N``) among ``Set-Cookie`` values that carry a value."""
    found = []
    for header in set_cookies:
        match = SESSION_COOKIE.match(header)
        if match and match.group(1).strip('"'):
            found.append(header.split("=", 1)[0])
    return found


def session_cookies_in_jar(session: aiohttp.ClientSession) -> list[str]:
    return [c.key for c in session.cookie_jar if SESSION_COOKIE.match(f"{c.key}={c.value}") and c.value]


def assert_clean_refusal(result: LoginResult, jar_owner: aiohttp.ClientSession, log: pytest.LogCaptureFixture,
                         names: str, *, status: int | None = None) -> str:
    """The four promises of the module docstring, bar the last; returns the request id."""
    resp = result.response
    assert 400 <= resp.status < 600 and resp.status != 500, (resp.status, result.body_text[:500])
    if status is not None:
        assert resp.status == status
    assert resp.content_type == "text/html"
    match = REQUEST_ID.search(result.body_text)
    assert match, result.body_text[:500]
    rid = match.group(1)
    assert resp.headers.get("X-Request-Id") == rid
    text = html.unescape(result.body_text)
    assert names in text, f"the page does not name the failed check {names!r}: {text[:800]}"
    assert session_cookies_in(resp.headers.getall("Set-Cookie", [])) == []
    assert session_cookies_in_jar(jar_owner) == []
    lines = [r.getMessage() for r in log.records if r.name.startswith("authproxy") and rid in r.getMessage()]
    assert any(names in line for line in lines), f"no log line with rid={rid} names {names!r}: {lines}"
    return rid


async def assert_still_serving(stack: EvilStack) -> None:
    """``/ping`` answers and, with the provider behaving again, a login goes through to the upstream."""
    stack.idp.mode = "good"
    async with browser() as session:
        async with session.get(stack.url + "/ping") as resp:
            assert resp.status == 200
        result = await login_via_http(session, stack.url + "/after?x=1")
        assert result.status == 200, result.body_text[:500]
        record = json.loads(result.body_text)
        assert record["raw_path"] == "/after?x=1"
        assert header_values(record, "X-Forwarded-User") == [stack.idp.user]
        assert session_cookies_in_jar(session)


# -- the ID token --------------------------------------------------------------------------------------------


def test_every_bad_id_token_mode_is_covered():
    assert set(ID_TOKEN_CHECKS) == set(BAD_ID_TOKEN_MODES)


# Modes that change the JWKS the provider serves, not only the tokens it signs.
JWKS_MODES = {"kid_absent_two_keys"}


@pytest.mark.parametrize("mode", sorted(ID_TOKEN_CHECKS))
async def test_bad_id_token_is_refused(evil_factory, proxy_log, mode):
    # A mode that changes the JWKS is in force from the start: the proxy reads the JWKS at start-up (for /ready).
    stack = await evil_factory(mode=mode if mode in JWKS_MODES else "good")
    stack.idp.mode = mode
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        assert_clean_refusal(result, session, proxy_log, ID_TOKEN_CHECKS[mode], status=502)
    assert stack.echo.seen == []
    await assert_still_serving(stack)


async def test_userinfo_naming_another_subject_is_refused(evil_factory, proxy_log):
    """OIDC Core §5.3.2: the userinfo ``sub`` must be the ID token's, or the answers are not about one user."""
    stack = await evil_factory(provider={"use_userinfo": True})
    stack.idp.mode = "userinfo_sub_mismatch"
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        assert_clean_refusal(result, session, proxy_log, "(userinfo_sub)", status=502)
    assert stack.idp.requests_to("/userinfo")
    await assert_still_serving(stack)


# -- the authorization response (RFC 9207) and the token endpoint -------------------------------------------


async def test_authorization_response_from_another_issuer_is_refused_before_the_code_is_spent(
        evil_factory, proxy_log):
    """RFC 9207 §2.4 / RFC 9700 §4.4.2 (mix-up): a response naming another issuer never reaches our token
    endpoint."""
    stack = await evil_factory()
    stack.idp.mode = "auth_response_iss_mismatch"
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        assert_clean_refusal(result, session, proxy_log, "(iss)", status=502)
    assert stack.idp.grants == []
    await assert_still_serving(stack)


async def test_authorization_response_without_iss_is_refused_when_the_provider_promises_one(
        evil_factory, proxy_log):
    """RFC 9207 §2.4: with ``authorization_response_iss_parameter_supported: true`` in the metadata, the client
    MUST reject an authorization response that has no ``iss`` — else an attacker's mix-up just drops it."""
    stack = await evil_factory()
    stack.idp.mode = "auth_response_iss_missing"
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        assert_clean_refusal(result, session, proxy_log, "(iss)", status=502)
    assert stack.idp.grants == []
    await assert_still_serving(stack)


@pytest.mark.parametrize("mode", sorted(TOKEN_ENDPOINT_CHECKS))
async def test_broken_token_endpoint_is_a_clean_error(evil_factory, proxy_log, mode):
    stack = await evil_factory()
    stack.idp.mode = mode
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        assert_clean_refusal(result, session, proxy_log, TOKEN_ENDPOINT_CHECKS[mode], status=502)
    assert stack.idp.count_grants("authorization_code", ok=None) == 1
    await assert_still_serving(stack)


def test_every_bad_mode_is_exercised():
    exercised = set(ID_TOKEN_CHECKS) | set(TOKEN_ENDPOINT_CHECKS) | set(NESTED_JSON_CHECKS) | {
        "userinfo_sub_mismatch", "auth_response_iss_mismatch", "auth_response_iss_missing",
        "discovery_issuer_mismatch", "discovery_nested_json"}
    assert exercised == set(BAD_MODES)


# mode -> the step the page and the log must name: JSON nested past the parser's recursion limit.
NESTED_JSON_CHECKS = {
    "jwks_nested_json": "during jwks: it answered HTTP 200 with something that is not a JSON object",
    "token_nested_json": "during token exchange: it answered HTTP 200 with something that is not a JSON object",
    "userinfo_nested_json": "during userinfo: it answered HTTP 200 with something that is not a JSON object",
}


@pytest.mark.parametrize("mode", sorted(NESTED_JSON_CHECKS))
async def test_deeply_nested_json_from_the_provider_is_a_clean_error(evil_factory, proxy_log, mode):
    """``json.loads`` raises RecursionError on deep nesting, which no ``except ValueError`` catches: it
    was a 500 with a traceback. Every answer that does not parse is a ProviderError (502) naming the step."""
    offset = {"s": 0.0}
    stack = await evil_factory(provider={"use_userinfo": True}, clock=lambda: time.time() + offset["s"])
    stack.idp.mode = mode
    if mode == "jwks_nested_json":
        # The JWKS was read at start-up (for /ready), while it was good: what is tested is a read of this one.
        stack.proxy.app[PROVIDER].jwks.keys = None
        offset["s"] = 2             # past the pause SigningKeys keeps after a read (JWKS_RETRY_AFTER)
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        assert_clean_refusal(result, session, proxy_log, NESTED_JSON_CHECKS[mode], status=502)
    assert stack.echo.seen == []
    offset["s"] = 10                # past the pause after a JWKS that could not be read (JWKS_RETRY_AFTER)
    await assert_still_serving(stack)


@pytest.mark.parametrize("claims", [
    {"preferred_username": "bob\r\nX-Forwarded-User: admin"},
    {"email": "bob@example.test\r\nX-Admin: 1"},
    {"groups": ["staff", "ops\r\nX-Forwarded-Groups: admin"]},
    {"preferred_username": "bob\x00admin"},
    {"sub": "alice\r\nX-Forwarded-User: admin"},
], ids=["username-crlf", "email-crlf", "group-crlf", "username-nul", "sub-crlf"])
async def test_control_characters_in_identity_claims_never_reach_a_header(evil_factory, proxy_log, claims):
    """Claims are the provider's (or, for a profile field, the user's) text; they become request headers.

    aiohttp refuses CR/LF in a header it writes, so nothing is injected — but the refusal must not be a
    500 on every request of that session. Either the login is refused cleanly, or the bad claim is left
    out of the identity; the upstream never sees a control character either way.
    """
    stack = await evil_factory()
    stack.idp.extra_claims = claims
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/private")
        if result.status >= 400:
            assert_clean_refusal(result, session, proxy_log, "")
        else:
            assert result.status == 200
            record = json.loads(result.body_text)
            assert header_values(record, "X-Forwarded-User") == ["alice"]
            assert not any(ch in value for _, value in record["headers"] for ch in "\r\n\x00")
            assert header_values(record, "X-Admin") == []
        async with session.get(stack.url + "/oauth2/auth") as resp:
            assert resp.status in (202, 401)
    stack.idp.extra_claims = {}
    await assert_still_serving(stack)


# -- discovery ------------------------------------------------------------------------------------------------


async def test_discovery_naming_another_issuer_keeps_the_proxy_unready(evil_factory, proxy_log):
    """OpenID Connect Discovery §4.3: the document's ``issuer`` must be the configured one, or nothing is used."""
    stack = await evil_factory(mode="discovery_issuer_mismatch", wait_ready=False)
    deadline = time.monotonic() + 5
    while not any("names issuer" in r.getMessage() for r in proxy_log.records if r.name.startswith("authproxy")):
        assert time.monotonic() < deadline, "the proxy never logged the issuer mismatch"
        await asyncio.sleep(0.02)
    assert stack.proxy.app[PROVIDER].metadata is None
    async with browser() as session:
        async with session.get(stack.url + "/ping") as resp:
            assert resp.status == 200
        async with session.get(stack.url + "/ready") as resp:
            assert resp.status == 503
        for path, headers in (("/oauth2/start?rd=%2F", HTML), ("/private", HTML)):
            async with session.get(stack.url + path, headers=headers, allow_redirects=False) as resp:
                body = await resp.text()
                assert 400 <= resp.status < 600 and resp.status != 500, (path, resp.status, body[:300])
                assert resp.content_type == "text/html" and REQUEST_ID.search(body)
                assert "discovery" in html.unescape(body)
                assert session_cookies_in(resp.headers.getall("Set-Cookie", [])) == []
        async with session.get(stack.url + "/private", headers=API) as resp:
            assert resp.status not in (200, 500) and resp.content_type == "application/json"
    assert stack.echo.seen == []
    # The provider fixes its document: the retry loop picks it up and logins work.
    stack.idp.mode = "good"
    deadline = time.monotonic() + 5
    while stack.proxy.app[PROVIDER].metadata is None:
        assert time.monotonic() < deadline, "the proxy never became ready"
        await asyncio.sleep(0.05)
    await assert_still_serving(stack)


async def test_deeply_nested_discovery_document_is_retried_until_it_parses(evil_factory, proxy_log):
    """The metadata loader runs in the background until discovery succeeds. A RecursionError used to end
    that task silently, and /ready stayed 503 until a restart; now it is a ProviderError, logged and retried."""
    stack = await evil_factory(mode="discovery_nested_json", wait_ready=False)
    deadline = time.monotonic() + 10
    while not any("not loaded (attempt 2)" in r.getMessage() for r in proxy_log.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in proxy_log.records][-5:]
        await asyncio.sleep(0.05)
    assert any("discovery: it answered HTTP 200 with something that is not a JSON object" in r.getMessage()
               for r in proxy_log.records if r.name.startswith("authproxy"))
    assert stack.proxy.app[PROVIDER].metadata is None
    async with browser() as session:
        async with session.get(stack.url + "/ready") as resp:
            assert resp.status == 503
    stack.idp.mode = "good"
    deadline = time.monotonic() + 10
    while stack.proxy.app[PROVIDER].metadata is None:
        assert time.monotonic() < deadline, "the proxy never became ready"
        await asyncio.sleep(0.05)
    async with browser() as session:
        async with session.get(stack.url + "/ready") as resp:
            assert resp.status == 200
    await assert_still_serving(stack)


# -- state and code -------------------------------------------------------------------------------------------


async def _authorization_response(session: aiohttp.ClientSession, stack: EvilStack, rd: str = "/x") -> str:
    """Start a login and let the provider answer: the callback URL it sends the browser to (not followed)."""
    async with session.get(stack.url + "/oauth2/start?" + urlencode({"rd": rd}), headers=HTML,
                           allow_redirects=False) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    async with session.get(authorize, allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


def _with_params(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return parts._replace(query=urlencode(query)).geturl()


async def _get(session: aiohttp.ClientSession, url: str) -> LoginResult:
    async with session.get(url, headers=HTML, allow_redirects=False) as resp:
        return LoginResult(resp, await resp.text(), [url])


@pytest.mark.parametrize("state", [None, "", "forged-state", "a" * 300])
async def test_callback_with_missing_or_wrong_state_is_refused(evil_factory, proxy_log, state):
    stack = await evil_factory()
    async with browser() as session:
        callback = await _authorization_response(session, stack)
        result = await _get(session, _with_params(callback, state=state))
        assert_clean_refusal(result, session, proxy_log, "start again", status=403)
        assert "StateMismatch" in " ".join(r.getMessage() for r in proxy_log.records)
    assert stack.idp.grants == []                     # the code was never spent
    await assert_still_serving(stack)


async def test_replayed_callback_is_refused(evil_factory, proxy_log):
    """The state is single-use (RFC 6749 §10.12): the exact callback URL a second time is a 403 — in the
    browser that used it and in any other — and never reaches the token endpoint again."""
    stack = await evil_factory()
    async with browser() as session:
        callback = await _authorization_response(session, stack, rd="/first")
        async with session.get(callback, headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == stack.url + "/first"
        assert session_cookies_in_jar(session)
        result = await _get(session, callback)
        assert result.status == 403
        assert session_cookies_in(result.response.headers.getall("Set-Cookie", [])) == []
    async with browser() as attacker:
        result = await _get(attacker, callback)
        assert_clean_refusal(result, attacker, proxy_log, "start again", status=403)
    assert stack.idp.count_grants("authorization_code", ok=None) == 1


async def test_spent_code_injected_into_a_fresh_login_gives_no_session(evil_factory, proxy_log):
    """A stolen, already redeemed code pasted into another login (fresh state cookie): the provider refuses
    it (single-use, and PKCE binds it to the first verifier), so no second session comes out of it."""
    stack = await evil_factory()
    async with browser() as victim:
        callback = await _authorization_response(victim, stack)
        async with victim.get(callback, headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302
    code = parse_qs(urlsplit(callback).query)["code"][0]
    async with browser() as attacker:
        fresh = await _authorization_response(attacker, stack)
        result = await _get(attacker, _with_params(fresh, code=code))
        assert_clean_refusal(result, attacker, proxy_log, "invalid_grant", status=502)
    assert stack.idp.count_grants("authorization_code", ok=True) == 1
    assert stack.idp.count_grants("authorization_code", ok=False) == 1


# -- what must keep working -----------------------------------------------------------------------------------


async def test_signing_key_rotation_between_logins_is_accepted(evil_factory):
    """OIDC Core §10.1.1 / RP test rp-key-rotation-op-sign-key: a new kid makes the proxy refetch the JWKS."""
    stack = await evil_factory()
    async with browser() as session:
        assert (await login_via_http(session, stack.url + "/one")).status == 200
    stack.idp.rotate_signing_key("evil-2")
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/two")
        assert result.status == 200, result.body_text[:500]
        assert json.loads(result.body_text)["path"] == "/two"
    assert len(stack.idp.requests_to("/jwks")) == 2
    assert {k.kid for k in stack.proxy.app[PROVIDER].jwks.keys.keys} == {"evil-2"}


async def test_token_without_kid_is_accepted_when_the_jwks_has_one_key(evil_factory):
    """OIDC Core §10.1: a kid is only required when the JWKS holds more than one key."""
    stack = await evil_factory()
    stack.idp.mode = "kid_absent_one_key"
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/no-kid")
        assert result.status == 200, result.body_text[:500]
        assert header_values(json.loads(result.body_text), "X-Forwarded-User") == ["alice"]


async def test_refresh_answer_without_id_token_keeps_the_session(evil_factory):
    """OIDC Core §12.2: a refresh response MAY omit the ID token; the session keeps its identity and ID token."""
    offset = {"s": 0.0}
    stack = await evil_factory(clock=lambda: time.time() + offset["s"])
    stack.idp.expires_in = 120
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/before")
        assert result.status == 200
        first_token = header_values(json.loads(result.body_text), "Authorization")[0]
        codec = stack.proxy.app[CODEC]
        before = codec.load({c.key: c.value for c in session.cookie_jar})
        offset["s"] = 100                           # inside the refresh window, still before expiry
        async with session.get(stack.url + "/after", headers=API) as resp:
            assert resp.status == 200
            record = await resp.json()
            assert session_cookies_in(resp.headers.getall("Set-Cookie", []))
        assert stack.idp.count_grants("refresh_token") == 1
        assert header_values(record, "Authorization")[0] != first_token
        assert header_values(record, "X-Forwarded-User") == ["alice"]
        after = codec.load({c.key: c.value for c in session.cookie_jar})
        assert after.identity == before.identity and after.id_token == before.id_token
        assert after.access_token != before.access_token
        async with session.get(stack.url + "/again", headers=API) as resp:
            assert resp.status == 200
        assert stack.idp.count_grants("refresh_token") == 1


@pytest.mark.parametrize("refresh_id_token", [True, False], ids=["with-id-token", "without-id-token"])
async def test_refresh_with_userinfo_about_another_user_ends_the_session(evil_factory, refresh_id_token):
    """OIDC Core §5.3.2, checked at sign-in, must hold at every refresh too: userinfo answering for mallory
    merged mallory's claims (here the groups, which only userinfo carries) into alice's session when the
    refresh answer had an ID token for alice. Now the session ends; the app never sees mallory's groups."""
    offset = {"s": 0.0}
    stack = await evil_factory(clock=lambda: time.time() + offset["s"],
                               provider={"use_userinfo": True, "claims": {"groups": "admin_groups"}})
    stack.idp.expires_in = 120
    stack.idp.refresh_id_token = refresh_id_token
    stack.idp.claims_of["mallory"] = {"admin_groups": ["admins"]}
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/before")
        assert result.status == 200, result.body_text[:300]
        assert header_values(json.loads(result.body_text), "X-Forwarded-Groups") == []
        stack.idp.mode = "userinfo_sub_mismatch"
        offset["s"] = 100                           # inside the refresh window
        async with session.get(stack.url + "/after", headers=API) as resp:
            assert resp.status == 401, await resp.text()
    assert stack.idp.count_grants("refresh_token") == 1
    assert [r["path"] for r in stack.echo.seen] == ["/before"]
