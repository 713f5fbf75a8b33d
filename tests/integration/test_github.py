"""The proxy with ``type: github`` against a fake GitHub (tests/support/github.py) that answers as GitHub's docs say.

What GitHub does differently from an OpenID Connect provider, and each test here pins down: no ID token and
no ``iss`` in the callback; identity from ``/user`` (a numeric ``id``), email from ``/user/emails`` when it
is private; token errors with HTTP 200; OAuth-app tokens that never expire, GitHub-App tokens that expire and
rotate their refresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from proxy import __version__
from proxy.session import CODEC, Session
from tests.support.browserless import login_via_http
from tests.support.echo import EchoServer, header_values, start_echo
from tests.support.github import (CLIENT_ID, CLIENT_SECRET, CODE_TTL, PRIMARY_EMAIL, FakeGitHub, GitHubUser,
                                  start_github)
from tests.support.ports import free_port
from tests.support.proxyrun import RunningProxy, config_dict, start_proxy

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}
SCOPES = ["read:user", "user:email"]
USER_PATH = "/api/v3/user"
EMAILS_PATH = "/api/v3/user/emails"
TOKEN_PATH = "/login/oauth/access_token"
EXPIRES_IN = 60            # the expiring-token case: seconds of life of a user-to-server token (GitHub: 8 h)
AUTHORIZE_PATH = "/login/oauth/authorize"


@dataclass
class GitHubStack:
    github: FakeGitHub
    echo: EchoServer
    proxy: RunningProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def session_of(self, client: aiohttp.ClientSession) -> Session | None:
        cookies = {c.key: c.value for c in client.cookie_jar if c.key.startswith("_authproxy")}
        return self.proxy.app[CODEC].load(cookies)


GitHubStackFactory = Callable[..., Awaitable[GitHubStack]]


@pytest.fixture
async def github_stack_factory() -> AsyncIterator[GitHubStackFactory]:
    """``await github_stack_factory(**start_github_options)``: fake GitHub, echo upstream, proxy (type github)."""
    async with contextlib.AsyncExitStack() as cleanup:
        async def factory(*, scopes: list[str] | None = SCOPES, proxy_clock: Callable[[], float] | None = None,
                          provider_options: dict[str, Any] | None = None, authorization: dict[str, Any] | None = None,
                          **github_options: Any) -> GitHubStack:
            port = free_port()
            public = f"http://127.0.0.1:{port}"
            github = await start_github(free_port(), callback_url=public + "/oauth2/callback", **github_options)
            cleanup.push_async_callback(github.close)
            echo = await start_echo(free_port())
            cleanup.push_async_callback(echo.close)
            data = config_dict(port=port, issuer=github.url, upstream_url=echo.url, client_id=CLIENT_ID,
                               client_secret=CLIENT_SECRET)
            # Replaced whole: config_dict's provider is an OIDC one (issuer, openid scope, prompt=consent).
            data["provider"] = {"type": "github", "base_url": github.url, "client_id": CLIENT_ID,
                                "client_secret": CLIENT_SECRET, "extra_authorize_params": {},
                                **({"scopes": scopes} if scopes is not None else {}), **(provider_options or {})}
            if authorization is not None:
                data["authorization"] = authorization
            proxy = await start_proxy(data, **({"clock": proxy_clock} if proxy_clock else {}))
            cleanup.push_async_callback(proxy.close)
            return GitHubStack(github=github, echo=echo, proxy=proxy)

        yield factory


@pytest.fixture
async def github_stack(github_stack_factory: GitHubStackFactory) -> GitHubStack:
    return await github_stack_factory()


def bearer(record: dict) -> str:
    [value] = header_values(record, "Authorization")
    assert value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


async def get_json(client: aiohttp.ClientSession, url: str) -> dict:
    async with client.get(url, headers=API) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_login_forwards_github_identity_primary_email_and_token(github_stack, browser_session):
    stack, github = github_stack, github_stack.github
    result = await login_via_http(browser_session, stack.url + "/hello?x=1")
    assert result.status == 200, result.body_text
    record = json.loads(result.body_text)
    assert record["raw_path"] == "/hello?x=1"

    # The authorization request: GitHub scopes, PKCE S256, no OIDC nonce; GitHub's redirect carries no iss.
    [authorize] = github.requests_to(AUTHORIZE_PATH)
    assert authorize.query["scope"] == "read:user user:email"
    assert authorize.query["code_challenge_method"] == "S256"
    assert "nonce" not in authorize.query
    callback = next(url for url in result.visited if urlsplit(url).path == "/oauth2/callback")
    assert set(parse_qs(urlsplit(callback).query)) == {"code", "state"}

    # The code exchange: JSON asked for, client_secret_basic, the verifier matched the challenge.
    [grant] = github.grants
    assert (grant.grant_type, grant.ok, grant.answered_as) == ("authorization_code", True, "json")
    assert grant.client_auth == "basic" and grant.pkce == "verified"
    [token_request] = github.requests_to(TOKEN_PATH)
    assert token_request.headers["Accept"] == "application/json"
    assert token_request.form["redirect_uri"] == stack.url + "/oauth2/callback"

    # /user gave no email, so /user/emails was asked, with the token and a User-Agent, once each.
    api_calls = github.requests_to(USER_PATH) + github.requests_to(EMAILS_PATH)
    assert [r.path for r in api_calls] == [USER_PATH, EMAILS_PATH]
    for call in api_calls:
        assert call.headers["User-Agent"] == f"authproxy/{__version__}"
        assert call.headers["Authorization"] == "Bearer <redacted>"

    assert bearer(record) == grant.access_token and grant.access_token.startswith("gho_")
    assert header_values(record, "X-Forwarded-User") == ["583231"]
    assert header_values(record, "X-Forwarded-Preferred-Username") == ["octocat"]
    assert header_values(record, "X-Forwarded-Email") == [PRIMARY_EMAIL]


async def test_public_email_is_used_without_asking_user_emails(github_stack_factory, browser_session):
    stack = await github_stack_factory(user=GitHubUser(public_email="octocat@github.com"))
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 200, result.body_text
    assert header_values(json.loads(result.body_text), "X-Forwarded-Email") == ["octocat@github.com"]
    assert len(stack.github.requests_to(USER_PATH)) == 1
    assert stack.github.requests_to(EMAILS_PATH) == []


async def test_refused_user_emails_still_signs_in_without_email(github_stack_factory, browser_session):
    # Without the user:email scope GitHub refuses /user/emails; the email is optional, the login is not.
    stack = await github_stack_factory(scopes=["read:user"])
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 200, result.body_text
    record = json.loads(result.body_text)
    assert header_values(record, "X-Forwarded-User") == ["583231"]
    assert header_values(record, "X-Forwarded-Email") == []
    assert len(stack.github.requests_to(EMAILS_PATH)) == 1


async def test_non_expiring_token_is_never_refreshed(github_stack, browser_session):
    stack, github = github_stack, github_stack.github
    first = json.loads((await login_via_http(browser_session, stack.url + "/")).body_text)
    session = stack.session_of(browser_session)
    assert session is not None and session.expires_at is None and session.refresh_token is None
    tokens = {bearer(first)}
    for i in range(3):
        tokens.add(bearer(await get_json(browser_session, f"{stack.url}/n/{i}")))
    await asyncio.sleep(2.2)
    for i in range(3):
        tokens.add(bearer(await get_json(browser_session, f"{stack.url}/later/{i}")))
    assert tokens == {github.grants[0].access_token}
    assert github.count_grants("refresh_token", ok=None) == 0
    assert len(github.requests_to(TOKEN_PATH)) == 1


async def test_expiring_token_is_refreshed_once_when_due_and_rotation_is_followed(github_stack_factory,
                                                                                  browser_session):
    # One clock for the fake GitHub and the proxy, moved forward by the test: "not yet due" then has
    # EXPIRES_IN / 2 seconds of margin, however slow the machine, and nothing sleeps.
    clock = _Clock()
    stack = await github_stack_factory(expiring=True, expires_in=EXPIRES_IN, clock=clock, proxy_clock=clock)
    github = stack.github
    first = json.loads((await login_via_http(browser_session, stack.url + "/")).body_text)
    login_grant = github.grants[0]
    assert bearer(first) == login_grant.access_token and login_grant.access_token.startswith("ghu_")
    assert login_grant.refresh_token is not None and login_grant.refresh_token.startswith("ghr_")

    # Not yet due (the window is half the lifetime): no refresh.
    assert bearer(await get_json(browser_session, stack.url + "/early")) == login_grant.access_token
    assert github.count_grants("refresh_token", ok=None) == 0

    clock.offset += EXPIRES_IN / 2 + 1
    second = await get_json(browser_session, stack.url + "/due")
    assert github.count_grants("refresh_token", ok=None) == 1
    refresh = github.grants[1]
    assert refresh.ok and refresh.spent_refresh_token == login_grant.refresh_token
    assert bearer(second) == refresh.access_token != login_grant.access_token
    assert not github.token_is_active(login_grant.access_token)           # GitHub kills the old token
    assert not github.refresh_token_is_active(login_grant.refresh_token)  # and the spent refresh token

    # The session now holds the rotated refresh token: the next refresh presents it, and it works.
    clock.offset += EXPIRES_IN / 2 + 1
    third = await get_json(browser_session, stack.url + "/due-again")
    assert github.count_grants("refresh_token", ok=None) == 2
    again = github.grants[2]
    assert again.ok and again.spent_refresh_token == refresh.refresh_token
    assert bearer(third) == again.access_token
    assert github.count_grants("refresh_token", ok=False) == 0


class _Clock:
    """A clock for the fake that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("kind", ["unknown", "expired"])
async def test_rejected_code_gives_clean_error_page_and_proxy_stays_up(github_stack_factory, browser_session, kind):
    clock = _Clock()
    stack = await github_stack_factory(clock=clock)
    async with browser_session.get(stack.url + "/oauth2/start?rd=/x", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith(stack.github.url + AUTHORIZE_PATH)
    if kind == "unknown":
        state, code = parse_qs(urlsplit(location).query)["state"][0], "bogus"
    else:
        async with browser_session.get(location, allow_redirects=False) as resp:
            assert resp.status == 302
            back = parse_qs(urlsplit(resp.headers["Location"]).query)
        state, code = back["state"][0], back["code"][0]
        clock.offset = CODE_TTL + 1                        # the user came back after more than 10 minutes
    async with browser_session.get(stack.url + "/oauth2/callback", params={"code": code, "state": state},
                                   headers=HTML) as resp:
        page = await resp.text()
        assert resp.status == 502, page
        assert resp.content_type == "text/html"
    assert "bad_verification_code" in page
    assert [(g.grant_type, g.ok, g.error) for g in stack.github.grants] == \
        [("authorization_code", False, "bad_verification_code")]
    assert stack.session_of(browser_session) is None
    async with browser_session.get(stack.url + "/ping") as resp:
        assert resp.status == 200
    async with browser_session.get(stack.url + "/api", headers=API) as resp:
        assert resp.status == 401
    assert stack.echo.seen == []


async def test_non_bearer_token_type_is_refused_without_a_session(github_stack_factory, browser_session):
    stack = await github_stack_factory(token_type="mac")
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 502, result.body_text
    assert urlsplit(result.url).path == "/oauth2/callback"
    assert "Bearer" in result.body_text and "mac" in result.body_text
    assert stack.github.count_grants("authorization_code") == 1     # GitHub said yes; the proxy said no
    assert stack.github.requests_to(USER_PATH) == []
    assert stack.session_of(browser_session) is None
    async with browser_session.get(stack.url + "/api", headers=API) as resp:
        assert resp.status == 401
    assert stack.echo.seen == []


async def test_user_denying_access_gets_403_page_and_no_token_request(github_stack_factory, browser_session):
    stack = await github_stack_factory(approve=False)
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 403, result.body_text
    assert "access_denied" in result.body_text
    assert stack.github.requests_to(TOKEN_PATH) == []
    assert stack.session_of(browser_session) is None


async def test_form_encoded_token_answer_is_understood(github_stack_factory, browser_session):
    """GitHub's default answer format (what it sends when Accept is not JSON): expires_in arrives as text."""
    stack = await github_stack_factory(answer_format="form", expiring=True)
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 200, result.body_text
    [grant] = stack.github.grants
    assert grant.answered_as == "form"
    assert bearer(json.loads(result.body_text)) == grant.access_token
    session = stack.session_of(browser_session)
    assert session is not None and session.refresh_token == grant.refresh_token
    assert session.expires_at is not None and session.expires_at > session.issued_at + 28000


# -- the fake itself answers like GitHub (so the tests above test against the right thing) ------------------


async def test_fake_github_follows_githubs_documented_answers(github_stack):
    github, callback = github_stack.github, github_stack.url + "/oauth2/callback"
    async with aiohttp.ClientSession() as client:
        authorize = github.url + AUTHORIZE_PATH
        base = {"client_id": CLIENT_ID, "redirect_uri": callback, "scope": "read:user", "state": "s1"}
        async with client.get(authorize, params={**base, "client_id": "nope"}, allow_redirects=False) as resp:
            assert resp.status == 404 and "Location" not in resp.headers
        async with client.get(authorize, params={**base, "redirect_uri": "http://127.0.0.1:1/cb"},
                              allow_redirects=False) as resp:
            assert resp.status == 400 and "Location" not in resp.headers
        async with client.get(authorize, params=base, allow_redirects=False) as resp:
            assert resp.status == 302
            back = parse_qs(urlsplit(resp.headers["Location"]).query)
        assert set(back) == {"code", "state"} and back["state"] == ["s1"]

        # Without Accept: JSON the answer is form-encoded; errors come with 200; codes are single-use.
        form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": back["code"][0]}
        async with client.post(github.url + TOKEN_PATH, data=form) as resp:
            assert resp.status == 200 and resp.content_type == "application/x-www-form-urlencoded"
            answer = parse_qs(await resp.text())
        assert answer["token_type"] == ["bearer"] and answer["scope"] == ["read:user"]
        assert "expires_in" not in answer and "refresh_token" not in answer
        token = answer["access_token"][0]
        async with client.post(github.url + TOKEN_PATH, data=form, headers=API) as resp:
            assert resp.status == 200
            assert (await resp.json())["error"] == "bad_verification_code"
        async with client.post(github.url + TOKEN_PATH, data={**form, "client_secret": "wrong"},
                               headers=API) as resp:
            assert resp.status == 200
            assert (await resp.json())["error"] == "incorrect_client_credentials"

        # The API: User-Agent required, "token" scheme accepted, Bad credentials, emails need user:email.
        async with client.get(github.url + USER_PATH, headers={"Authorization": f"token {token}"},
                              skip_auto_headers=["User-Agent"]) as resp:
            assert resp.status == 403
        async with client.get(github.url + USER_PATH, headers={"Authorization": f"token {token}"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["email"] is None
        async with client.get(github.url + USER_PATH, headers={"Authorization": "Bearer gho_nope"}) as resp:
            assert resp.status == 401 and (await resp.json())["message"] == "Bad credentials"
        async with client.get(github.url + EMAILS_PATH, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 404                      # the token has read:user only


# -- organisations and teams as groups (provider.github_groups, issue 20) -------------------------------------

MEMBER = GitHubUser(orgs=("acme", "octo-org"),
                    teams=(*(("acme", f"team-{i:03}") for i in range(130)), ("octo-org", "devs")))


async def test_github_groups_are_the_users_organisations_and_teams_over_every_page(github_stack_factory,
                                                                                   browser_session):
    stack = await github_stack_factory(scopes=None, user=MEMBER, provider_options={"github_groups": True},
                                       authorization={"allowed_groups": ["octo-org/devs"]})
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 200
    [authorize] = stack.github.requests_to(AUTHORIZE_PATH)
    assert "read:org" in authorize.query["scope"].split()          # the preset asks for it
    groups = header_values(json.loads(result.body_text), "X-Forwarded-Groups")[0].split(",")
    assert "acme/team-129" in groups and "acme/team-000" in groups and "octo-org/devs" in groups   # page 2
    assert {"acme", "octo-org"} <= set(groups) and len(groups) == 133
    assert [r.query["page"] for r in stack.github.requests_to("/api/v3/user/teams")] == ["1", "2"]


async def test_a_team_the_rule_does_not_name_is_refused(github_stack_factory, browser_session):
    stack = await github_stack_factory(scopes=None, user=MEMBER, provider_options={"github_groups": True},
                                       authorization={"allowed_groups": ["acme/admins"]})
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 403


async def test_without_read_org_the_sign_in_fails_naming_the_scope(github_stack_factory, browser_session):
    """Signed in without groups, every allowed_groups rule would answer 403 and hide the cause."""
    stack = await github_stack_factory(user=MEMBER, provider_options={"github_groups": True})   # SCOPES lack read:org
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 502 and "read:org" in result.body_text


async def test_without_github_groups_no_organisation_is_read(github_stack, browser_session):
    result = await login_via_http(browser_session, github_stack.url + "/")
    assert result.status == 200
    assert github_stack.github.requests_to("/api/v3/user/orgs") == []
    assert github_stack.github.requests_to("/api/v3/user/teams") == []
    assert header_values(json.loads(result.body_text), "X-Forwarded-Groups") in ([], [""])
