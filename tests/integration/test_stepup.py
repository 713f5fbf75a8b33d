"""Step-up per route (issue 20): routes that ask for an ``acr`` or a recent sign-in, against the real
oidc-provider, whose ``acr_by_password`` option (tests/idp/server.mjs) signs a user in with
``urn:example:mfa`` when they type the password "mfa" and with ``urn:example:pwd`` otherwise."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from prometheus_client import generate_latest

from proxy.metrics import METRICS
from proxy.session import CODEC
from tests.support.browserless import login_via_http
from tests.support.timing import OffsetClock

pytestmark = pytest.mark.integration

MFA, PWD = "urn:example:mfa", "urn:example:pwd"
IDP = {"acr_by_password": {"mfa": MFA, "*": PWD}}
ROUTES = [{"path": "/admin", "authorization": {"acr": [MFA]}},
          {"path": "/fresh", "authorization": {"max_auth_age": 300}}]
HTML = {"Accept": "text/html,application/xhtml+xml"}
API = {"Accept": "application/json"}


def new_browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def cookies_of(client: aiohttp.ClientSession) -> dict[str, str]:
    return {c.key: c.value for c in client.cookie_jar if c.key.startswith("_authproxy") and "_login_" not in c.key}


def session_of(stack, client: aiohttp.ClientSession):
    return stack.proxy.app[CODEC].load(cookies_of(client))


async def _get(client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
               cookies: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    extra = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
    async with client.get(url, headers={**HTML, **(headers or {}), **extra}, allow_redirects=False) as resp:
        return resp.status, dict(resp.headers), await resp.text()


def _query(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


async def test_a_browser_signs_in_again_with_the_routes_acr_and_the_old_session_ends(stack_factory):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES)
    async with new_browser() as browser:
        first = await login_via_http(browser, stack.url + "/app")
        assert first.status == 200
        old = cookies_of(browser)
        assert session_of(stack, browser).acr == PWD
        status, headers, _ = await _get(browser, stack.url + "/admin?x=1")
        assert status == 302 and headers["Location"].startswith(stack.idp.issuer)
        asked = _query(headers["Location"])
        assert asked["acr_values"] == [MFA] and asked["prompt"][0].split(" ")[0] == "login"
        assert json.loads((await login_via_http(browser, stack.url + "/app")).body_text)["path"] == "/app"

        result = await login_via_http(browser, stack.url + "/admin?x=1", password="mfa")
        assert result.status == 200 and json.loads(result.body_text)["raw_path"] == "/admin?x=1"
        assert session_of(stack, browser).acr == MFA
        assert (await _get(browser, stack.url + "/admin"))[0] == 200                 # no second trip
    async with aiohttp.ClientSession() as replay:            # the replaced session's cookie no longer works
        status, headers, _ = await _get(replay, stack.url + "/app", cookies=old)
        assert status == 302 and headers["Location"].startswith(stack.idp.issuer)


async def test_with_redis_the_replaced_session_is_ended_in_the_store(stack_factory, redis_server):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES,
                                session={"store": "redis", "redis": {"url": redis_server.url, "key_prefix": "su:"}})
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        old = cookies_of(browser)
        assert (await _get(browser, stack.url + "/admin"))[0] == 302
        result = await login_via_http(browser, stack.url + "/admin", password="mfa")
        assert result.status == 200 and json.loads(result.body_text)["path"] == "/admin"
        assert cookies_of(browser) != old
        assert (await _get(browser, stack.url + "/admin"))[0] == 200
    async with aiohttp.ClientSession() as replay:
        status, headers, _ = await _get(replay, stack.url + "/app", cookies=old)
        assert status == 302 and headers["Location"].startswith(stack.idp.issuer)


async def test_a_weaker_answer_gets_a_403_page_and_keeps_the_session(stack_factory):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES)
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        before = session_of(stack, browser)
        result = await login_via_http(browser, stack.url + "/admin", password="pw")
        assert result.status == 403 and "stronger sign-in" in result.body_text
        assert sum(urlsplit(url).path == "/oauth2/callback" for url in result.visited) == 1      # one trip, no loop
        assert urlsplit(result.url).path == "/oauth2/callback"
        assert session_of(stack, browser).id == before.id
        assert (await _get(browser, stack.url + "/app"))[0] == 200
    counted = generate_latest(stack.proxy.app[METRICS].registry).decode()
    assert 'authproxy_logins_total{reason="step_up_refused",stage="failed"} 1.0' in counted


async def test_a_user_not_signed_in_is_asked_for_the_acr_at_once(stack_factory):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES)
    async with new_browser() as browser:
        status, headers, _ = await _get(browser, stack.url + "/admin")
        assert status == 302 and _query(headers["Location"])["acr_values"] == [MFA]
        result = await login_via_http(browser, stack.url + "/admin", password="mfa")
        assert result.status == 200 and json.loads(result.body_text)["path"] == "/admin"
        assert sum(urlsplit(url).path == "/oauth2/callback" for url in result.visited) == 1


async def test_a_sign_in_older_than_max_auth_age_signs_in_again(stack_factory):
    clock = OffsetClock()
    stack = await stack_factory(idp_options=IDP, routes=ROUTES, clock=clock)
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        signed_in = session_of(stack, browser)
        assert signed_in.auth_time is not None
        assert (await _get(browser, stack.url + "/fresh"))[0] == 200
        clock.advance(400)                     # 400 s later to the proxy: more than 300 s and the 60 s leeway
        assert (await _get(browser, stack.url + "/app"))[0] == 200             # the other routes do not mind
        status, headers, _ = await _get(browser, stack.url + "/fresh")
        assert status == 302
        asked = _query(headers["Location"])
        assert asked["max_age"] == ["300"] and asked["prompt"][0].split(" ")[0] == "login"
        assert "acr_values" not in asked
        clock.advance(-400)                    # the provider's clock did not move: the new sign-in is fresh to both
        result = await login_via_http(browser, headers["Location"])
        assert result.status == 200 and json.loads(result.body_text)["path"] == "/fresh"
        renewed = session_of(stack, browser)
        assert renewed.id != signed_in.id and renewed.auth_time is not None


async def test_an_api_client_gets_rfc_9470s_401(stack_factory):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES)
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        status, headers, body = await _get(browser, stack.url + "/admin/api", headers=API)
        assert status == 401
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and 'error="insufficient_user_authentication"' in challenge
        assert f'acr_values="{MFA}"' in challenge and "error_description=" in challenge
        answer = json.loads(body)
        assert answer["error"] == "insufficient_user_authentication" and answer["acr_values"] == MFA
        assert "step_up=" in answer["login_url"]
        result = await login_via_http(browser, answer["login_url"], password="mfa")     # the link does the step-up
        assert result.status == 200 and session_of(stack, browser).acr == MFA
        status, headers, _ = await _get(browser, stack.url + "/fresh/api", headers=API)
        assert status == 200


async def test_a_max_auth_age_401_names_max_age(stack_factory):
    clock = OffsetClock()
    stack = await stack_factory(idp_options=IDP, routes=ROUTES, clock=clock)
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        clock.advance(400)
        status, headers, _ = await _get(browser, stack.url + "/fresh", headers=API)
        assert status == 401 and "max_age=300" in headers["WWW-Authenticate"]
        assert "acr_values" not in headers["WWW-Authenticate"]


# -- refresh never raises (or lowers) what the sign-in established ----------------------------------


@pytest.mark.parametrize(("password", "acr", "admin"), [("mfa", MFA, 200), ("pw", PWD, 302)])
async def test_a_refresh_keeps_the_sign_ins_acr(stack_factory, password, acr, admin):
    clock = OffsetClock()
    stack = await stack_factory(idp_options={**IDP, "access_token_ttl": 60}, routes=ROUTES, clock=clock)
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app", password=password)
        signed_in = session_of(stack, browser)
        clock.advance(45)                                        # due: within half of the 60 s lifetime
        assert (await _get(browser, stack.url + "/app"))[0] == 200
        assert stack.idp.count_grants("refresh_token") == 1
        refreshed = session_of(stack, browser)
        assert refreshed.access_token != signed_in.access_token and refreshed.id == signed_in.id
        assert (refreshed.acr, refreshed.auth_time) == (acr, signed_in.auth_time)
        assert (await _get(browser, stack.url + "/admin"))[0] == admin


# -- a client cannot claim a level it did not sign in with ------------------------------------------


async def test_headers_query_and_start_parameters_do_not_raise_the_acr(stack_factory):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES,
                                provider={"authorize_parameters": ["acr_values", "prompt"]})
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        forged = {"Acr": MFA, "X-Forwarded-Acr": MFA, "X-Auth-Request-Acr": MFA, "Auth-Time": "9999999999"}
        status, headers, _ = await _get(browser, stack.url + f"/admin?acr={MFA}&acr_values={MFA}", headers=forged)
        assert status == 302 and headers["Location"].startswith(stack.idp.issuer)
        status, _, _ = await _get(browser, stack.url + "/admin", headers={**forged, **API})
        assert status == 401
        # A link asking for the level only asks: the weaker answer is refused, and nothing is recorded.
        before = session_of(stack, browser)
        result = await login_via_http(browser, stack.url + f"/oauth2/start?rd=/admin&acr_values={MFA}&prompt=login")
        assert result.status == 502 and "security check" in result.body_text
        assert session_of(stack, browser).id == before.id and before.acr == PWD
        # A step_up value that we did not seal (or sealed for something else: the session cookie) is refused.
        for bad in ("1.AAAA", cookies_of(browser)["_authproxy"]):
            status, _, _ = await _get(browser, stack.url + "/oauth2/start?rd=/admin&step_up=" + bad)
            assert status == 400
        assert (await _get(browser, stack.url + "/admin"))[0] == 302


async def test_the_step_up_link_asks_for_what_the_route_needs_whatever_authorize_parameters_allows(stack_factory):
    stack = await stack_factory(idp_options=IDP, routes=ROUTES)          # authorize_parameters: none
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        _, _, body = await _get(browser, stack.url + "/admin", headers=API)
        status, headers, _ = await _get(browser, json.loads(body)["login_url"])
        assert status == 302 and _query(headers["Location"])["acr_values"] == [MFA]
        status, headers, _ = await _get(browser, stack.url + f"/oauth2/start?rd=/admin&acr_values={MFA}")
        assert status == 302 and "acr_values" not in _query(headers["Location"])     # a link's own: left out


# -- Bearer tokens ------------------------------------------------------------------------------------

API_AUDIENCE = "https://api.authproxy.test"


async def test_a_bearer_token_is_judged_by_its_own_acr(stack_factory):
    stack = await stack_factory(provider={"accept_bearer_tokens": True, "bearer_audiences": [API_AUDIENCE]},
                                idp_options={**IDP, "jwt_access_token_audience": API_AUDIENCE}, routes=ROUTES,
                                forward_auth={"rule_sets": [{"name": "mfa", "acr": [MFA]}]})
    tokens = {}
    for password in ("pw", "mfa"):
        async with new_browser() as browser:
            await login_via_http(browser, stack.url + "/app", password=password)
            tokens[password] = session_of(stack, browser).access_token
    async with aiohttp.ClientSession() as client:
        for accept in (API, HTML):
            status, headers, body = await _get(client, stack.url + "/admin",
                                               headers={**accept, "Authorization": f"Bearer {tokens['pw']}"})
            assert status == 401 and "Location" not in headers                   # a token cannot sign in again
            assert 'error="insufficient_user_authentication"' in headers["WWW-Authenticate"]
            assert f'acr_values="{MFA}"' in headers["WWW-Authenticate"]
            assert "login_url" not in json.loads(body)
        status, _, _ = await _get(client, stack.url + "/admin",
                                  headers={**API, "Authorization": f"Bearer {tokens['mfa']}"})
        assert status == 200
        for token, expected in ((tokens["pw"], 403), (tokens["mfa"], 202)):
            status, headers, _ = await _get(client, stack.url + "/oauth2/auth/mfa",
                                            headers={"Authorization": f"Bearer {token}"})
            assert status == expected


# -- forward auth -------------------------------------------------------------------------------------


async def test_forward_auth_steps_up_where_the_ingress_passes_the_answer_on(stack_factory):
    """The redirect forms send a page load to sign in again; nginx's bare form gets a 403, since a 401 there
    goes to nginx's error_page location — authproxy as the proxy, where the rule set is unknown."""
    stack = await stack_factory(idp_options=IDP, trusted_proxies=["127.0.0.1/32"],
                                forward_auth={"rule_sets": [{"name": "mfa", "acr": [MFA]}]})
    host = urlsplit(stack.url).netloc
    original = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Host": host,
                "X-Forwarded-Uri": "/secret?x=1"}
    auth = stack.url + "/oauth2/auth"
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        assert (await _get(browser, auth, headers=original))[0] == 202                # the global rules ask nothing
        status, headers, body = await _get(browser, auth + "/mfa", headers=original)   # nginx: a bare 403
        assert status == 403 and body == ""
        assert 'error="insufficient_user_authentication"' in headers["WWW-Authenticate"]
        assert f'acr_values="{MFA}"' in headers["WWW-Authenticate"]
        status, headers, body = await _get(browser, auth + "/mfa/redirect", headers={**original, **API})
        assert status == 401 and 'error="insufficient_user_authentication"' in headers["WWW-Authenticate"]
        assert "step_up=" in json.loads(body)["login_url"]
        status, headers, _ = await _get(browser, auth + "/mfa/redirect", headers=original)
        assert status == 302
        start = headers["Location"]
        assert start.startswith(stack.url + "/oauth2/start?") and "step_up=" in start
        assert _query(start)["rd"] == [f"http://{host}/secret?x=1"]
        result = await login_via_http(browser, start, password="mfa")
        assert result.status == 200 and json.loads(result.body_text)["raw_path"] == "/secret?x=1"
        assert (await _get(browser, auth + "/mfa", headers=original))[0] == 202
        assert (await _get(browser, auth + "/mfa/redirect", headers=original))[0] == 202


async def test_forward_auth_with_a_weaker_answer_ends_on_a_403_page(stack_factory):
    stack = await stack_factory(idp_options=IDP, trusted_proxies=["127.0.0.1/32"],
                                forward_auth={"rule_sets": [{"name": "mfa", "acr": [MFA]}]})
    host = urlsplit(stack.url).netloc
    original = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Host": host,
                "X-Forwarded-Uri": "/secret"}
    async with new_browser() as browser:
        await login_via_http(browser, stack.url + "/app")
        _, headers, _ = await _get(browser, stack.url + "/oauth2/auth/mfa/redirect", headers=original)
        result = await login_via_http(browser, headers["Location"], password="pw")
        assert result.status == 403 and "stronger sign-in" in result.body_text
        assert (await _get(browser, stack.url + "/oauth2/auth/mfa", headers=original))[0] == 403
