"""Access rules through the whole proxy, against the real oidc-provider and an echo upstream.

The provider gives user X the groups ["staff", "X-group"] and the verified email X@example.test.
What the upstream saw is asserted on the echo server's records: a request the proxy refuses must not
reach it at all, and a request that passes without authentication must carry no identity.
"""

from __future__ import annotations

import json
import time

import aiohttp
import pytest
from yarl import URL

from proxy.session import CODEC
from tests.support.browserless import login_via_http
from tests.support.echo import header_values, start_echo
from tests.support.fixtures import CLIENT_ID
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml"}
IDENTITY_HEADERS = ("Authorization", "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups",
                    "X-Forwarded-Preferred-Username")
SPOOFED = {"X-Forwarded-User": "root", "X-Forwarded-Email": "root@example.test", "X-Forwarded-Groups": "admins",
           "X_Forwarded_User": "root", "Authorization": "Bearer forged"}
SPA_ORIGIN = "http://spa.test:8080"


def new_browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def raw(url: str) -> URL:
    """A URL sent exactly as written: no dot-segment removal, no re-encoding."""
    return URL(url, encoded=True)


def no_identity(record: dict) -> bool:
    return all(header_values(record, name) == [] for name in IDENTITY_HEADERS)


def session_of(stack, client: aiohttp.ClientSession):
    cookies = {c.key: c.value for c in client.cookie_jar if c.key.startswith("_authproxy")}
    return stack.proxy.app[CODEC].load(cookies)


# -- authorization -------------------------------------------------------------------------------


async def test_user_outside_the_rules_gets_403_naming_them_with_sign_out(stack_factory):
    stack = await stack_factory(authorization={"allowed_groups": ["alice-group"]})
    async with new_browser() as bob:
        result = await login_via_http(bob, stack.url + "/reports?q=1", username="bob")
        assert result.status == 403
        assert result.response.content_type == "text/html"
        assert "bob (bob@example.test)" in result.body_text
        assert 'href="/oauth2/sign_out"' in result.body_text
        assert result.response.headers["X-Request-Id"] in result.body_text
        # A page, not a redirect: the next request is answered the same way, the session kept.
        async with bob.get(stack.url + "/reports", headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 403 and "Set-Cookie" not in resp.headers
        async with bob.get(stack.url + "/reports", headers=API) as resp:
            assert resp.status == 403
            body = await resp.json()
        assert body["error"] == "forbidden" and body["user"] == "bob" and body["sign_out_url"] == "/oauth2/sign_out"
        async with bob.get(stack.url + "/oauth2/sign_out", allow_redirects=False) as resp:
            assert resp.status == 302
    assert stack.echo.seen == []
    async with new_browser() as alice:
        result = await login_via_http(alice, stack.url + "/reports", username="alice")
        assert result.status == 200 and json.loads(result.body_text)["path"] == "/reports"
    assert len(stack.echo.seen) == 1


async def test_per_upstream_rules_replace_the_global_ones(stack_factory):
    echo = await start_echo(free_port())
    try:
        stack = await stack_factory(
            authorization={"allowed_groups": ["bob-group"]},
            upstreams=[{"path": "/", "url": echo.url},
                       {"path": "/admin", "url": echo.url, "authorization": {"allowed_users": ["alice"]}}])
        async with new_browser() as bob, new_browser() as alice:
            await login_via_http(bob, stack.url + "/", username="bob")
            await login_via_http(alice, stack.url + "/admin/", username="alice")
            assert [r["path"] for r in echo.seen] == ["/", "/admin/"]

            async def status(client: aiohttp.ClientSession, path: str) -> int:
                async with client.get(raw(stack.url + path), headers=API) as resp:
                    return resp.status

            assert await status(bob, "/home") == 200
            assert await status(bob, "/admin/users") == 403       # global rules do not apply there…
            assert await status(alice, "/admin/users") == 200     # …the upstream's own do
            assert await status(alice, "/home") == 403
            assert await status(alice, "/admin/../home") == 400     # a dot segment: refused before routing
            assert await status(alice, "/%68ome") == 403            # routed on the decoded path
        assert [r["path"] for r in echo.seen] == ["/", "/admin/", "/home", "/admin/users"]
    finally:
        await echo.close()


async def test_oauth2_auth_checks_a_named_rule_set_on_top_of_the_global_rules(stack_factory):
    stack = await stack_factory(authorization={"allowed_users": ["bob", "carol"]},
                                forward_auth={"rule_sets": [
                                    {"name": "bobs", "allowed_groups": ["admins", "bob-group"]},
                                    {"name": "staff", "allowed_groups": ["staff"]},
                                    {"name": "mail", "email_domains": ["example.test"],
                                     "allowed_emails": ["BOB@example.test"]},
                                    {"name": "elsewhere", "email_domains": ["example.com"]},
                                    {"name": "only-bob", "allowed_users": ["bob"]}]})
    auth = stack.url + "/oauth2/auth"
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(auth + "/staff") as resp:
            assert resp.status == 401
    async with new_browser() as bob, new_browser() as carol, new_browser() as alice:
        await login_via_http(bob, stack.url + "/", username="bob")
        await login_via_http(carol, stack.url + "/", username="carol")
        await login_via_http(alice, stack.url + "/", username="alice")

        async def check(client: aiohttp.ClientSession, tail: str) -> int:
            async with client.get(auth + tail, allow_redirects=False) as resp:
                if resp.status == 202:
                    who = resp.headers["X-Forwarded-User"]
                    assert who in ("bob", "carol") and resp.headers["X-Auth-Request-User"] == who
                    assert resp.headers["X-Forwarded-Email"] == f"{who}@example.test"
                    assert resp.headers["X-Forwarded-Groups"] == f"staff,{who}-group"
                return resp.status

        assert await check(bob, "") == 202
        assert await check(bob, "/bobs") == 202
        assert await check(carol, "/bobs") == 403
        assert await check(bob, "/mail") == 202 and await check(carol, "/mail") == 403
        assert await check(bob, "/elsewhere") == 403
        assert await check(carol, "/only-bob") == 403
        assert await check(alice, "/staff") == 403                              # the global rules still apply
        assert await check(bob, "/staf") == 404                                 # a misspelt name fails closed
        assert await check(carol, "?allowed_groups=bob-group") == 400           # the old form fails closed
    assert [r["path"] for r in stack.echo.seen] == ["/", "/"]                  # alice never got through


# -- passing without authentication ------------------------------------------------------------


async def test_skip_auth_passes_without_login_and_without_identity(stack_factory, browser_session):
    stack = await stack_factory(skip_auth=[{"path": "^/public/", "methods": ["GET", "HEAD"]}])
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(stack.url + "/public/app.css", headers={**HTML, **SPOOFED},
                                 allow_redirects=False) as resp:
            assert resp.status == 200
            record = await resp.json()
        assert record["path"] == "/public/app.css" and no_identity(record)
        async with anonymous.post(stack.url + "/public/form", headers=API) as resp:
            assert resp.status == 401                                             # not a skipped method
        async with anonymous.get(stack.url + "/private?next=/public/", headers=API) as resp:
            assert resp.status == 401                                             # the query never matches

    await login_via_http(browser_session, stack.url + "/", username="bob")
    async with browser_session.get(stack.url + "/public/logo.png?v=2", headers={**HTML, **SPOOFED}) as resp:
        assert resp.status == 200 and "Set-Cookie" not in resp.headers
        record = await resp.json()
    assert record["raw_path"] == "/public/logo.png?v=2" and no_identity(record)
    assert "_authproxy" not in ";".join(header_values(record, "Cookie"))
    async with browser_session.get(stack.url + "/private", headers=API) as resp:
        assert resp.status == 200
        assert header_values(await resp.json(), "X-Forwarded-User") == ["bob"]   # the session still works


BYPASS_ATTEMPTS = ("/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin", "/public/..%2fadmin",
                   "/public%2f..%2fadmin", "/admin/..%2fpublic/x", "/public/..%5cadmin", "/public/./../admin",
                   "/public\\..\\admin")


async def test_dot_segment_tricks_do_not_match_a_skip_rule(stack_factory):
    """Dot segments and backslashes are refused outright (400), before any rule: ``paths.py``."""
    stack = await stack_factory(skip_auth=[{"path": "^/public/"}])
    async with aiohttp.ClientSession() as anonymous:
        for path in BYPASS_ATTEMPTS:
            async with anonymous.get(raw(stack.url + path), headers=API, allow_redirects=False) as resp:
                assert resp.status == 400, path
            async with anonymous.get(raw(stack.url + path), headers=HTML, allow_redirects=False) as resp:
                assert resp.status == 400 and "Location" not in resp.headers, path
        async with anonymous.get(raw(stack.url + "/public/a%20b.txt"), headers=API) as resp:
            assert resp.status == 200                                           # plain encoding is fine
    assert [r["raw_path"] for r in stack.echo.seen] == ["/public/a%20b.txt"]


# -- API clients and other origins -------------------------------------------------------------


@pytest.fixture
async def spa_stack(stack_factory):
    return await stack_factory(api_paths=["/api"], authorization={"allowed_groups": ["alice-group"]},
                               cors={"allowed_origins": [SPA_ORIGIN], "allow_preflight": True,
                                     "preflight_paths": ["^/api/"]})


async def test_api_paths_get_401_json_even_for_a_navigation(spa_stack):
    stack = spa_stack
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/api/items?page=2", headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 401 and resp.content_type == "application/json"
            body = await resp.json()
        assert body["login_url"] == stack.url + "/oauth2/start?rd=%2Fapi%2Fitems%3Fpage%3D2"
        async with client.get(stack.url + "/apiary", headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302                                            # whole segments only
        # A fetch from one of our pages: login_url comes back to that page, not to the API.
        referer = {**API, "Referer": stack.url + "/app/board?tab=2"}
        async with client.get(stack.url + "/api/items", headers=referer) as resp:
            assert (await resp.json())["login_url"] == stack.url + "/oauth2/start?rd=%2Fapp%2Fboard%3Ftab%3D2"
        elsewhere = {**API, "Referer": "http://evil.test/app"}
        async with client.get(stack.url + "/api/items", headers=elsewhere) as resp:
            assert (await resp.json())["login_url"] == stack.url + "/oauth2/start?rd=%2Fapi%2Fitems"
    assert stack.echo.seen == []


async def test_cors_headers_on_401_and_403_for_allowed_origins_only(spa_stack, browser_session):
    stack = spa_stack
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/api/items", headers={**API, "Origin": SPA_ORIGIN}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == SPA_ORIGIN
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert resp.headers["Vary"] == "Origin"
            assert "WWW-Authenticate" in resp.headers["Access-Control-Expose-Headers"]
        async with client.get(stack.url + "/api/items", headers={**API, "Origin": "http://evil.test"}) as resp:
            assert resp.status == 401
            assert "Access-Control-Allow-Origin" not in resp.headers
            assert "Access-Control-Allow-Credentials" not in resp.headers
    await login_via_http(browser_session, stack.url + "/", username="bob")      # bob is not in alice-group
    async with browser_session.get(stack.url + "/api/items", headers={**API, "Origin": SPA_ORIGIN}) as resp:
        assert resp.status == 403 and resp.headers["Access-Control-Allow-Origin"] == SPA_ORIGIN
    assert stack.echo.seen == []


async def test_preflight_from_allowed_origin_reaches_the_app_unauthenticated(spa_stack, browser_session):
    stack = spa_stack
    preflight = {"Origin": SPA_ORIGIN, "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "content-type"}
    await login_via_http(browser_session, stack.url + "/", username="alice")
    seen_before = len(stack.echo.seen)
    async with browser_session.options(stack.url + "/api/items/7", headers={**preflight, **SPOOFED}) as resp:
        assert resp.status == 200
        record = await resp.json()
    assert record["method"] == "OPTIONS" and no_identity(record)              # even with alice's cookie
    assert header_values(record, "Access-Control-Request-Method") == ["PUT"]
    async with aiohttp.ClientSession() as client:
        async with client.options(stack.url + "/api/items/7", headers={**preflight, "Origin": "http://evil.test"}) as r:
            assert r.status == 401
        async with client.options(stack.url + "/api/items/7", headers={"Origin": SPA_ORIGIN}) as r:
            assert r.status == 401                                             # not a preflight
    assert len(stack.echo.seen) == seen_before + 1


# -- bearer passthrough ------------------------------------------------------------------------


# The audience of the real provider's JWT access tokens (tests/idp/server.mjs jwt_access_token_audience).
API_AUDIENCE = "https://api.authproxy.test"


async def test_bearer_jwt_from_the_provider_is_verified_and_forwarded(stack_factory, browser_session):
    """The real provider's RFC 9068 access token (typ at+jwt, aud = the API) lets an API client in; the
    ID token of the same sign-in — it travels as id_token_hint in sign-out URLs — does not, even with the
    client id among the accepted audiences (the ID token's aud)."""
    offset = {"seconds": 0.0}
    stack = await stack_factory(provider={"accept_bearer_tokens": True, "bearer_audiences": [API_AUDIENCE, CLIENT_ID]},
                                authorization={"allowed_groups": ["staff"]},
                                forward_auth={"rule_sets": [{"name": "admins", "allowed_groups": ["admins"]}]},
                                idp_options={"jwt_access_token_audience": API_AUDIENCE},
                                clock=lambda: time.time() + offset["seconds"])
    await login_via_http(browser_session, stack.url + "/", username="bob")
    signed_in = session_of(stack, browser_session)
    access_token, id_token = signed_in.access_token, signed_in.id_token
    assert access_token.count(".") == 2 and id_token and id_token.count(".") == 2
    bearer = {**API, "Authorization": f"Bearer {access_token}"}
    async with aiohttp.ClientSession() as client:                          # no cookie at all
        async with client.get(stack.url + "/api/orders", headers={**bearer, "X-Forwarded-User": "root"}) as resp:
            assert resp.status == 200 and "Set-Cookie" not in resp.headers
            record = await resp.json()
        assert header_values(record, "Authorization") == [f"Bearer {access_token}"]
        assert header_values(record, "X-Forwarded-User") == ["bob"]
        assert header_values(record, "X-Forwarded-Groups") == ["staff,bob-group"]
        async with client.get(stack.url + "/oauth2/auth", headers=bearer) as resp:
            assert resp.status == 202 and resp.headers["X-Forwarded-User"] == "bob"
        async with client.get(stack.url + "/oauth2/auth/admins", headers=bearer) as resp:
            assert resp.status == 403                                      # the rules apply to tokens too
        async with client.get(stack.url + "/oauth2/userinfo", headers=bearer) as resp:
            assert (await resp.json())["user"] == "bob"

        header, payload, signature = access_token.split(".")
        flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
        for bad in (f"{header}.{payload}.{flipped}", f"{header}.{payload}.", "opaque-token", access_token + "x",
                    id_token):
            for accept in (API, HTML):
                async with client.get(stack.url + "/app", allow_redirects=False,
                                      headers={**accept, "Authorization": f"Bearer {bad}"}) as resp:
                    assert resp.status == 401, bad
                    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
                    assert "Location" not in resp.headers
    # A bad token with a valid session cookie is still refused: no fallback to the cookie.
    async with browser_session.get(stack.url + "/app", headers={**API, "Authorization": "Bearer a.b.c"}) as resp:
        assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    offset["seconds"] = 2 * 3600                                          # past the access token's exp (1 h)
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/api/orders", headers=bearer) as resp:
            assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert [r["path"] for r in stack.echo.seen] == ["/", "/api/orders"]


async def test_bearer_tokens_are_ignored_when_not_accepted(stack, browser_session):
    await login_via_http(browser_session, stack.url + "/", username="bob")
    session = session_of(stack, browser_session)
    async with aiohttp.ClientSession() as client:
        async with client.get(stack.url + "/api", headers={**API, "Authorization": f"Bearer {session.id_token}"}) as r:
            assert r.status == 401 and "invalid_token" not in r.headers["WWW-Authenticate"]
    async with browser_session.get(stack.url + "/api", headers={**API, "Authorization": "Bearer a.b.c"}) as resp:
        assert resp.status == 200
        assert header_values(await resp.json(), "Authorization") == [f"Bearer {session.access_token}"]


# -- pages -------------------------------------------------------------------------------------


async def test_error_page_template_from_templates_dir(stack_factory, tmp_path):
    (tmp_path / "error.html").write_text("<main data-status=$status><h1>$title</h1><p>$message</p>"
                                         "<nav>$actions</nav><small>$request_id</small> costs $$5</main>")
    stack = await stack_factory(templates_dir=str(tmp_path), authorization={"allowed_users": ["nobody"]})
    async with new_browser() as client:
        result = await login_via_http(client, stack.url + "/", username="o'neil&co")
    assert result.status == 403
    body = result.body_text
    assert body.startswith("<main data-status=403><h1>You do not have access</h1>")
    assert "signed in as o&#x27;neil&amp;co (o&#x27;neil&amp;co@example.test)" in body
    assert '<nav><a href="/oauth2/sign_out">Sign out</a></nav>' in body
    assert f"<small>{result.response.headers['X-Request-Id']}</small> costs $5</main>" in body
