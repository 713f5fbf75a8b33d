"""What the presets do beyond plain OpenID Connect, end to end: Entra ID's groups overage read from a fake
Microsoft Graph (tests/support/graph.py), and Google's hosted-domain check — each through the whole proxy,
signing in at the misbehaving provider (tests/support/evil_idp.py), which signs whatever claims a test gives
it, with the type set to the preset and only its URLs pointed at 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.session import CODEC
from tests.support.browserless import login_via_http
from tests.support.echo import header_values
from tests.support.evil_idp import EvilStack, start_evil_stack
from tests.support.graph import GROUPS_PATH, FakeGraph, start_graph
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
TENANT = "7f3c1e52-9a4b-4c1d-8e2f-0123456789ab"
GROUPS = [str(uuid.UUID(int=n)) for n in range(1, 6)]


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await started(coroutine)``: a stack or fake Graph, closed after the test."""
    async with contextlib.AsyncExitStack() as cleanup:
        async def start(awaitable: Awaitable[Any]) -> Any:
            thing = await awaitable
            cleanup.push_async_callback(thing.close)
            return thing
        yield start


async def entra(started, graph: FakeGraph, *, overage: dict[str, Any], clock=None, **sections) -> EvilStack:
    """The proxy with ``type: microsoft`` at the evil provider, whose ID tokens for alice carry ``overage``
    in place of a groups claim."""
    stack: EvilStack = await started(start_evil_stack(
        provider={"type": "microsoft", "tenant": TENANT, "microsoft_graph_url": graph.url},
        **({"clock": clock} if clock else {}), **sections))
    stack.idp.claims_of["alice"] = {"groups": None, **overage}
    return stack


def claim_names(source: str) -> dict[str, Any]:
    """Entra's overage marker (OIDC Core §5.6.2 distributed claims), naming ``source`` as where groups are."""
    return {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": source}}}


@pytest.mark.parametrize("marker", ["_claim_names", "hasgroups"])
async def test_overflowing_groups_come_from_graph_never_from_the_tokens_source(started, marker):
    graph = await started(start_graph(free_port()))
    decoy = await started(start_graph(free_port()))           # the URL the token names: never to be asked
    graph.groups = GROUPS
    overage = claim_names(decoy.url + GROUPS_PATH) if marker == "_claim_names" else {"hasgroups": True}
    stack = await entra(started, graph, overage=overage, authorization={"allowed_groups": [GROUPS[4]]})
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/in")
        assert result.status == 200, result.body_text[:500]
        record = json.loads(result.body_text)
    assert header_values(record, "X-Forwarded-Groups") == [",".join(GROUPS)]
    # Every page (2 groups a page) asked with the user's own access token, the one the app is given too.
    assert [r.query.get("$skiptoken") for r in graph.seen] == [None, "2", "4"]
    [token] = set(graph.tokens_seen())
    assert header_values(record, "Authorization") == [f"Bearer {token}"]
    assert decoy.seen == []


async def test_groups_in_the_token_need_no_graph(started):
    graph = await started(start_graph(free_port()))
    stack = await entra(started, graph, overage={"groups": [GROUPS[0]]})
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/in")
        assert result.status == 200
        assert header_values(json.loads(result.body_text), "X-Forwarded-Groups") == [GROUPS[0]]
    assert graph.seen == []


@pytest.mark.parametrize("status", [403, 503])
async def test_a_graph_failure_fails_the_sign_in_closed(started, status):
    """A rule that refuses a group must not let in a user whose groups could not be read: no session at all."""
    graph = await started(start_graph(free_port()))
    graph.groups, graph.status = GROUPS, status
    stack = await entra(started, graph, overage=claim_names("https://graph.windows.net/x/getMemberObjects"),
                        authorization={"rules": ['!("' + GROUPS[0] + '" in groups)']})
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/in")
        assert result.status == 502, result.body_text[:500]
        assert "Microsoft Graph groups" in result.body_text
        if status == 403:
            assert "User.Read" in result.body_text
        assert not [c for c in session.cookie_jar if c.key.startswith("_authproxy") and c.value
                    and not c.key.startswith("_authproxy_login")]
        async with session.get(stack.url + "/again", headers=API) as resp:
            assert resp.status == 401
    assert stack.echo.seen == []


async def test_refresh_reads_graph_again_keeps_groups_when_it_is_down_and_ends_when_it_refuses(started):
    offset = {"s": 0.0}
    graph = await started(start_graph(free_port()))
    graph.groups = GROUPS[:3]
    stack = await entra(started, graph, overage=claim_names("https://graph.windows.net/x"),
                        clock=lambda: time.time() + offset["s"])
    stack.idp.expires_in, stack.idp.refresh_id_token = 120, True
    codec = stack.proxy.app[CODEC]
    async with browser() as session:
        assert (await login_via_http(session, stack.url + "/in")).status == 200
        signed_in = len(graph.seen)

        async def forwarded_groups(path: str) -> list[str]:
            async with session.get(stack.url + path, headers=API) as resp:
                assert resp.status == 200, await resp.text()
                return header_values(await resp.json(), "X-Forwarded-Groups")

        # 1. The refreshed ID token overflows again: Graph is read again, and a group left is gone.
        graph.groups = GROUPS[1:3]
        offset["s"] += 100
        assert await forwarded_groups("/first-refresh") == [",".join(GROUPS[1:3])]
        assert stack.idp.count_grants("refresh_token") == 1 and len(graph.seen) > signed_in
        # 2. Graph down at the next refresh: the session keeps the groups it had, never none.
        graph.status = 503
        offset["s"] += 100
        assert await forwarded_groups("/graph-down") == [",".join(GROUPS[1:3])]
        assert stack.idp.count_grants("refresh_token") == 2
        kept = codec.load({c.key: c.value for c in session.cookie_jar})
        assert kept is not None and kept.identity.groups == tuple(GROUPS[1:3])
        # 3. Graph refuses: the groups cannot be confirmed, so the session ends.
        graph.status = 403
        offset["s"] += 100
        async with session.get(stack.url + "/graph-refuses", headers=API) as resp:
            assert resp.status == 401, await resp.text()
    assert stack.idp.count_grants("refresh_token") == 3
    assert [r["path"] for r in stack.echo.seen] == ["/in", "/first-refresh", "/graph-down"]


# -- Google: the verified ID token's hd --------------------------------------------------------------------


async def google(started, domains: list[str], **provider: Any) -> EvilStack:
    stack: EvilStack = await started(start_evil_stack(provider={"type": "google", "google_hosted_domains": domains,
                                                                **provider}))
    return stack


async def test_an_account_of_the_domain_signs_in_and_hd_is_sent_as_a_hint(started):
    stack = await google(started, ["example.com"])
    stack.idp.claims_of["alice"] = {"hd": "example.com"}
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/in")
        assert result.status == 200, result.body_text[:500]
    [authorize] = [r for r in stack.idp.requests if r.path == "/authorize"]
    assert authorize.params["hd"] == "example.com"


@pytest.mark.parametrize(("id_token_hd", "userinfo_hd"), [
    (None, None),                     # a personal Google account
    ("evil.example", None),           # another Workspace organisation
    (None, "example.com"),            # hd spoofed where nothing is signed: userinfo
    ("evil.example", "example.com"),
])
async def test_any_other_account_gets_a_403_page_whatever_userinfo_says(started, id_token_hd, userinfo_hd):
    stack = await google(started, ["example.com", "example.org"], use_userinfo=True)
    stack.idp.claims_of["alice"] = {"hd": id_token_hd, "email": "alice@example.com"}
    if userinfo_hd:
        stack.idp.userinfo_extra = {"hd": userinfo_hd}
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/in")
        assert result.status == 403, result.body_text[:500]
        assert "This account cannot sign in here" in result.body_text
        assert "example.com, example.org" in result.body_text
        async with session.get(stack.url + "/again", headers=API) as resp:
            assert resp.status == 401
    assert stack.echo.seen == []
    [authorize] = [r for r in stack.idp.requests if r.path == "/authorize"]
    assert "hd" not in authorize.params                        # two domains: no single hint to give



async def test_the_real_provider_s_distributed_groups_claim_is_read_from_graph(started, stack_factory):
    """oidc-provider releasing groups as a distributed claim (OIDC Core §5.6.2), as Entra ID does on overage:
    its ID token, verified as any other, leads to Graph and only Graph."""
    graph = await started(start_graph(free_port()))
    decoy = await started(start_graph(free_port()))
    graph.groups = GROUPS[:2]
    stack = await stack_factory(idp_options={"groups_overage_source": decoy.url + GROUPS_PATH},
                                provider={"type": "microsoft", "tenant": TENANT, "microsoft_graph_url": graph.url},
                                authorization={"allowed_groups": [GROUPS[1]]})
    async with browser() as session:
        result = await login_via_http(session, stack.url + "/in")
        assert result.status == 200, result.body_text[:500]
        record = json.loads(result.body_text)
    assert header_values(record, "X-Forwarded-Groups") == [",".join(GROUPS[:2])]
    assert len(graph.seen) == 1 and decoy.seen == []
