"""The gateway story over plain HTTP: log in at the real provider, get forwarded with Bearer, sign out."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.support.browserless import login_via_http, logout_via_http
from tests.support.echo import header_values
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html,application/xhtml+xml"}


async def test_login_forwards_bearer_and_identity(stack, browser_session):
    result = await login_via_http(browser_session, stack.url + "/deep/link?x=1&y=two", username="alice")
    assert result.status == 200
    record = json.loads(result.body_text)
    assert record["raw_path"] == "/deep/link?x=1&y=two"
    bearer = header_values(record, "Authorization")
    assert len(bearer) == 1 and bearer[0].startswith("Bearer ")
    token = bearer[0].removeprefix("Bearer ")
    info = await stack.idp.introspect(token, CLIENT_ID, CLIENT_SECRET)
    assert info["active"] is True and info["sub"] == "alice"
    assert header_values(record, "X-Forwarded-User") == ["alice"]
    assert header_values(record, "X-Forwarded-Email") == ["alice@example.test"]
    assert header_values(record, "X-Forwarded-Preferred-Username") == ["alice"]
    assert header_values(record, "X-Forwarded-Groups") == ["staff,alice-group"]
    cookies = ";".join(header_values(record, "Cookie"))
    assert "_authproxy" not in cookies
    # The visited chain went through the provider and back through our callback.
    assert any("/oauth2/callback" in url for url in result.visited)


async def test_session_cookie_is_sealed_httponly_and_reused(stack, browser_session):
    await login_via_http(browser_session, stack.url + "/first")
    jar = {c.key: c for c in browser_session.cookie_jar if c.key.startswith("_authproxy")}
    assert list(jar) == ["_authproxy"]
    morsel = jar["_authproxy"]
    assert morsel["httponly"] and morsel["samesite"] == "Lax"
    assert morsel.value.startswith("1.") and "alice" not in morsel.value
    async with browser_session.get(stack.url + "/second", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "/second"
        assert "Set-Cookie" not in resp.headers    # unchanged sessions are not rewritten


async def test_spoofed_headers_never_reach_upstream(stack, browser_session):
    await login_via_http(browser_session, stack.url + "/")
    spoof = {"X-Forwarded-User": "root", "X-Forwarded-Email": "root@evil", "Authorization": "Bearer forged",
             "X-Forwarded-Groups": "admin", "X_Forwarded_User": "root", "Connection": "close, X-Hop", "X-Hop": "1"}
    async with browser_session.get(stack.url + "/spoof", headers={**HTML, **spoof}) as resp:
        record = await resp.json()
    assert header_values(record, "X-Forwarded-User") == ["alice"]
    assert header_values(record, "X-Forwarded-Groups") == ["staff,alice-group"]
    assert header_values(record, "Authorization")[0] != "Bearer forged"
    assert header_values(record, "X-Hop") == []


async def test_api_request_without_session_gets_401_json(stack):
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/api/x?q=1", headers={"Accept": "application/json"},
                              allow_redirects=False) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
        assert body["login_url"] == stack.url + "/oauth2/start?rd=%2Fapi%2Fx%3Fq%3D1"
        async with client.get(stack.url + "/page", headers={**HTML, "Sec-Fetch-Mode": "cors"},
                              allow_redirects=False) as resp:
            assert resp.status == 401
    assert stack.echo.seen == []


async def test_browser_without_session_is_sent_to_provider_with_pkce(stack):
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/x", headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
            login_cookies = [c for c in resp.cookies if c.startswith("_authproxy_login_")]
    from urllib.parse import parse_qs, urlsplit
    parts = urlsplit(location)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert location.startswith(stack.idp.issuer)
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID
    assert q["redirect_uri"] == stack.url + "/oauth2/callback"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 32 and len(q["nonce"]) >= 32 and "openid" in q["scope"].split()
    assert login_cookies == ["_authproxy_login_" + q["state"]]


async def test_callback_with_unknown_state_is_403(stack):
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/oauth2/callback?state=nope&code=x", headers=HTML) as resp:
            assert resp.status == 403
            assert "no-store" in resp.headers["Cache-Control"]
            assert "Sign in again" in await resp.text()


async def test_provider_error_is_a_clear_page(stack, browser_session):
    async with browser_session.get(stack.url + "/x", headers=HTML, allow_redirects=False) as resp:
        from urllib.parse import parse_qs, urlsplit
        state = parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
    # As oidc-provider answers: with iss, which RFC 9207 §2 puts in error responses too (checked first).
    url = f"{stack.url}/oauth2/callback?error=access_denied&error_description=nope&state={state}&iss={stack.idp.issuer}"
    async with browser_session.get(url, headers=HTML) as resp:
        text = await resp.text()
        assert resp.status == 403
        assert "access_denied" in text and "Sign in again" in text


async def test_two_tabs_log_in_at_once(stack, browser_session):
    from urllib.parse import parse_qs, urlsplit
    starts = []
    for path in ("/tab-one", "/tab-two"):
        async with browser_session.get(stack.url + path, headers=HTML, allow_redirects=False) as resp:
            starts.append(resp.headers["Location"])
    # Finish the second tab's login first, then the first: both must land on their own page.
    second = await login_via_http(browser_session, starts[1])
    assert json.loads(second.body_text)["path"] == "/tab-two"
    first = await login_via_http(browser_session, starts[0])
    assert json.loads(first.body_text)["path"] == "/tab-one"
    assert parse_qs(urlsplit(starts[0]).query)["state"] != parse_qs(urlsplit(starts[1]).query)["state"]


async def test_login_cookies_are_bounded(stack):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        for i in range(8):
            async with client.get(stack.url + f"/p{i}", headers=HTML, allow_redirects=False) as resp:
                assert resp.status == 302
        names = [c.key for c in client.cookie_jar if c.key.startswith("_authproxy_login_")]
    assert 1 <= len(names) <= 3


async def test_sign_out_ends_session_here_and_at_provider(stack, browser_session):
    await login_via_http(browser_session, stack.url + "/")
    result = await logout_via_http(browser_session, stack.url + "/oauth2/sign_out")
    assert result.response.url.path == "/oauth2/signed_out"
    assert "signed out" in result.body_text.lower()
    assert not [c for c in browser_session.cookie_jar if c.key == "_authproxy"]
    async with browser_session.get(stack.url + "/again", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(stack.idp.issuer)


async def test_userinfo_auth_ping_ready(stack, browser_session):
    async with browser_session.get(stack.url + "/oauth2/userinfo") as resp:
        assert resp.status == 401
    async with browser_session.get(stack.url + "/oauth2/auth") as resp:
        assert resp.status == 401
    await login_via_http(browser_session, stack.url + "/")
    async with browser_session.get(stack.url + "/oauth2/userinfo") as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"].startswith("no-store")
        assert (await resp.json())["email"] == "alice@example.test"
    async with browser_session.get(stack.url + "/oauth2/auth") as resp:
        assert resp.status == 202 and resp.headers["X-Forwarded-User"] == "alice"
    for path in ("/ping", "/ready"):
        async with browser_session.get(stack.url + path) as resp:
            assert resp.status == 200


async def test_bad_cookie_is_signed_out_not_500(stack):
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as client:
        for value in ("garbage", "1.AAAA", "1." + "A" * 200):
            async with client.get(stack.url + "/x", headers={"Accept": "application/json",
                                                              "Cookie": f"_authproxy={value}"}) as resp:
                assert resp.status == 401
                assert "_authproxy" in resp.headers.get("Set-Cookie", "")   # cleared
