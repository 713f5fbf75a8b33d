"""The gate, through the real app: who may pass, and the answer each refusal gets from the boundary.

Every answer below was the gate's own before the boundary took over building them; these pin their
status, headers and bodies.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.bearer import invalid_token_header
from proxy.session import Identity
from tests.support.unit_app import CLOSED, cookie_for, metadata_loaded, unit_app, unit_config
from tests.unit.conftest import NOW, make_session

API = {"Accept": "application/json"}
PAGE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
SPA = "https://spa.example.com"


@pytest.fixture
async def client(aiohttp_client):
    async def make(**sections):
        app = unit_app(unit_config(**sections))
        client = await aiohttp_client(app)
        await metadata_loaded(app)
        return app, client
    return make


async def test_a_path_of_the_proxy_that_no_handler_serves_is_a_404_page_never_forwarded(client):
    _, c = await client()
    response = await c.get("/oauth2/nothing-here", headers=API)        # a page even for an API client
    assert response.status == 404
    assert response.content_type == "text/html"
    assert "This path belongs to the sign-in proxy and does not exist." in await response.text()
    assert response.headers["Cache-Control"] == "no-store" and response.headers["X-Request-Id"]


async def test_an_anonymous_api_client_gets_a_401_with_the_login_url(client):
    _, c = await client()
    response = await c.get("/data?x=1", headers=API)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="authproxy"'
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["error"] == "unauthenticated" and body["message"] == "Sign in to continue."
    assert body["login_url"] == "https://app.example.com/oauth2/start?rd=%2Fdata%3Fx%3D1"
    assert body["request_id"] == response.headers["X-Request-Id"]


async def test_the_401_sends_the_user_back_to_our_page_that_made_the_request(client):
    _, c = await client()
    response = await c.get("/api/items", headers={**API, "Referer": "https://app.example.com/inbox?tab=2"})
    assert (await response.json())["login_url"] == "https://app.example.com/oauth2/start?rd=%2Finbox%3Ftab%3D2"
    response = await c.get("/api/items", headers={**API, "Referer": "https://evil.example/inbox"})
    assert (await response.json())["login_url"] == "https://app.example.com/oauth2/start?rd=%2Fapi%2Fitems"


async def test_the_401_and_403_carry_cors_headers_for_an_allowed_origin_only(client):
    app, c = await client(cors={"allowed_origins": [SPA]}, authorization={"allowed_groups": ["admins"]})
    anonymous = await c.get("/data", headers={**API, "Origin": SPA})
    assert anonymous.headers["Access-Control-Allow-Origin"] == SPA
    assert anonymous.headers["Access-Control-Allow-Credentials"] == "true"
    refused = await c.get("/data", headers={**API, "Origin": SPA, **cookie_for(app, make_session())})
    assert refused.status == 403 and refused.headers["Access-Control-Allow-Origin"] == SPA
    foreign = await c.get("/data", headers={**API, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers and foreign.headers["Vary"] == "Origin"


async def test_an_anonymous_navigation_is_sent_to_the_provider_with_a_login_cookie(client):
    _, c = await client()
    response = await c.get("/page", headers=PAGE, allow_redirects=False)
    assert response.status == 302
    target = urlsplit(response.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{CLOSED}/authorize"
    query = parse_qs(target.query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [
        "https://app.example.com/oauth2/callback"]
    assert any(c.startswith("__Host-authproxy_login_") for c in response.headers.getall("Set-Cookie"))
    assert response.headers["Cache-Control"] == "private, no-store"        # it sets our cookie


async def test_a_navigation_under_api_paths_gets_the_401_not_a_redirect(client):
    _, c = await client(api_paths=["/api"])
    response = await c.get("/api/x", headers=PAGE, allow_redirects=False)
    assert response.status == 401 and (await response.json())["error"] == "unauthenticated"


async def test_a_signed_in_user_the_rules_refuse_gets_a_403_naming_the_account(client):
    app, c = await client(authorization={"allowed_groups": ["admins"]})
    cookie = cookie_for(app, make_session())
    response = await c.get("/data", headers={**API, **cookie})
    assert response.status == 403
    assert await response.json() == {"error": "forbidden", "message": "Signed in as alice (a@x.test), without access "
                                     "here.", "user": "alice", "email": "a@x.test",
                                     "sign_out_url": "/oauth2/sign_out", "request_id": response.headers["X-Request-Id"]}
    page = await c.get("/data", headers={**PAGE, **cookie}, allow_redirects=False)
    assert page.status == 403 and page.content_type == "text/html"
    text = await page.text()
    assert "You are signed in as alice (a@x.test), but this account may not use this application." in text
    assert 'href="/oauth2/sign_out"' in text and "Sign out to use another account" in text


async def test_a_user_who_may_pass_is_forwarded_and_an_unreachable_app_is_a_502(client):
    app, c = await client()
    response = await c.get("/data", headers={**API, **cookie_for(app, make_session())})
    assert response.status == 502
    assert (await response.json())["error"] == "UpstreamError"


async def test_a_malformed_bearer_token_is_a_401_invalid_token_never_a_fallback_to_the_cookie(client):
    app, c = await client(provider={"accept_bearer_tokens": True})
    headers = {**API, **cookie_for(app, make_session()), "Authorization": "Bearer not one token"}
    response = await c.get("/data", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == invalid_token_header()
    body = await response.json()
    assert body == {"error": "invalid_token", "message": "The access token is not valid here.",
                    "request_id": response.headers["X-Request-Id"]}
    userinfo = await c.get("/oauth2/userinfo", headers=headers)
    assert userinfo.status == 401 and (await userinfo.json())["error"] == "invalid_token"


# /oauth2/auth: tests/unit/test_forward_auth.py


# -- /oauth2/userinfo ------------------------------------------------------------------------------


async def test_userinfo_is_the_signed_in_user_or_a_short_401(client):
    app, c = await client()
    anonymous = await c.get("/oauth2/userinfo")
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert await anonymous.json() == {"error": "unauthenticated"}
    session = make_session(identity=Identity(sub="bob", email="b@x.test", name="Bob", groups=("g",)))
    signed_in = await c.get("/oauth2/userinfo", headers=cookie_for(app, session))
    assert await signed_in.json() == {"user": "bob", "email": "b@x.test", "preferred_username": None, "name": "Bob",
                                      "groups": ["g"]}


# -- many hosts --------------------------------------------------------------------------------------------


async def test_on_an_allowed_host_the_login_url_comes_back_to_that_host(client):
    _, c = await client(cookie={"domain": "example.com"}, allowed_hosts=["wiki.example.com"])
    on_wiki = {**API, "Host": "wiki.example.com"}

    async def rd(headers: dict[str, str]) -> str:
        response = await c.get("/data?x=1", headers=headers)
        assert response.status == 401
        return parse_qs(urlsplit((await response.json())["login_url"]).query)["rd"][0]

    assert await rd(on_wiki) == "https://wiki.example.com/data?x=1"
    assert await rd({**on_wiki, "Referer": "https://wiki.example.com/inbox?tab=2"}) == \
        "https://wiki.example.com/inbox?tab=2"
    assert await rd({**on_wiki, "Referer": "https://evil.example/inbox"}) == "https://wiki.example.com/data?x=1"
    assert await rd({**on_wiki, "Referer": "https://wiki.example.com@evil.example/x"}) == \
        "https://wiki.example.com/data?x=1"
    assert await rd({**API, "Host": "evil.example"}) == "/data?x=1"          # not allowed: public_url's origin
    assert await rd(API) == "/data?x=1"


# -- step-up (stepup.py) ------------------------------------------------------------------------------------

MFA = "urn:example:mfa"
STEP_UP_ROUTES = {"upstreams": [
    {"path": "/admin", "url": CLOSED, "authorization": {"acr": [MFA], "max_auth_age": 300}},
    {"path": "/", "url": CLOSED}]}


async def test_a_session_that_meets_the_routes_acr_and_age_passes(client):
    app, c = await client(**STEP_UP_ROUTES)
    response = await c.get("/admin", headers={**PAGE, **cookie_for(app, make_session(acr=MFA, auth_time=NOW - 100))})
    assert response.status == 502                     # through the gate, to the closed upstream port


@pytest.mark.parametrize(("acr", "age"), [(None, 100), ("urn:example:pwd", 100), (MFA, None), (MFA, 400),
                                          (MFA.upper(), 100)])
async def test_a_page_load_short_of_the_route_signs_in_again_asking_for_it(client, acr, age):
    app, c = await client(**STEP_UP_ROUTES)
    session = make_session(acr=acr, auth_time=None if age is None else NOW - age)
    response = await c.get("/admin/x?y=1", headers={**PAGE, **cookie_for(app, session)}, allow_redirects=False)
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{CLOSED}/authorize"
    query = parse_qs(location.query)
    assert query["acr_values"] == [MFA] and query["max_age"] == ["300"] and query["prompt"] == ["login"]
    response = await c.get("/", headers={**PAGE, **cookie_for(app, session)}, allow_redirects=False)
    assert response.status == 502                     # the other routes ask nothing


async def test_an_api_client_short_of_the_route_gets_rfc_9470s_401_with_a_step_up_link(client):
    app, c = await client(**STEP_UP_ROUTES)
    response = await c.get("/admin/api", headers={**API, **cookie_for(app, make_session(acr="urn:example:pwd"))})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="authproxy", error="insufficient_user_authentication", error_description="A stronger or '
        f'more recent sign-in is required", acr_values="{MFA}", max_age=300')
    body = await response.json()
    assert body["error"] == "insufficient_user_authentication" and body["acr_values"] == MFA
    assert body["max_age"] == "300"
    link = urlsplit(body["login_url"])
    assert link.path == "/oauth2/start" and parse_qs(link.query)["rd"] == ["/admin/api"]
    start = await c.get(link.path + "?" + link.query, allow_redirects=False)
    assert start.status == 302 and parse_qs(urlsplit(start.headers["Location"]).query)["acr_values"] == [MFA]


async def test_nobody_signed_in_is_asked_for_the_routes_acr_at_once(client):
    _, c = await client(**STEP_UP_ROUTES)
    response = await c.get("/admin", headers=PAGE, allow_redirects=False)
    assert response.status == 302
    assert parse_qs(urlsplit(response.headers["Location"]).query)["acr_values"] == [MFA]
    response = await c.get("/elsewhere", headers=PAGE, allow_redirects=False)
    assert "acr_values" not in parse_qs(urlsplit(response.headers["Location"]).query)
