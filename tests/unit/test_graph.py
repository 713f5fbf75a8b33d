"""Entra ID groups overage: the marker is recognised, and Microsoft Graph is read only where it should be.

A fake Graph (an aiohttp server on 127.0.0.1) answers pages of group ids, as Graph's "list a user's
memberships (direct and transitive)" does, or misbehaves: next-page links to another host, pages for ever,
too many groups, refusals, answers that are not a group list. A second server stands for any other host a
link or a token may name, and records whether it was ever asked.
"""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import ProviderError
from proxy.provider import graph
from proxy.provider.client import ProviderClient

TOKEN = "graph-access-token"


def gid(n: int) -> str:
    return str(uuid.UUID(int=n))


class FakeGraph:
    """Pages of group ids below ``/v1.0/me/transitiveMemberOf/microsoft.graph.group``; ``pages`` is what each
    request answers in turn (a page's ``next`` is the nextLink, relative to ``base`` unless absolute)."""

    def __init__(self) -> None:
        self.pages: list[tuple[int, dict]] = []
        self.seen: list[web.Request] = []
        self.base = ""

    def app(self) -> web.Application:
        async def groups(request: web.Request) -> web.Response:
            self.seen.append(request)
            index = min(len(self.seen), len(self.pages)) - 1
            status, body = self.pages[index]
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_get(graph.GROUPS_PATH, groups)
        app.router.add_get("/{tail:.*}", groups)
        return app


def page(ids: list[str], next_link: str | None = None) -> tuple[int, dict]:
    body: dict = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
                  "value": [{"@odata.type": "#microsoft.graph.group", "id": i} for i in ids]}
    if next_link is not None:
        body["@odata.nextLink"] = next_link
    return 200, body


@pytest.fixture
async def fake(aiohttp_server):
    fake = FakeGraph()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def elsewhere(aiohttp_server):
    """Another host: nothing may ever be asked of it."""
    other = FakeGraph()
    other.pages = [page([gid(666)])]
    server = await aiohttp_server(other.app(), host="127.0.0.1")
    other.base = str(server.make_url("")).rstrip("/")
    return other


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as http:
        yield ProviderClient(http, timeout=5.0)


def test_the_overage_markers():
    assert graph.groups_overflowed({"_claim_names": {"groups": "src1"},
                                    "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/x"}}})
    assert graph.groups_overflowed({"hasgroups": True})
    assert not graph.groups_overflowed({"groups": ["a"]})
    assert not graph.groups_overflowed({"_claim_names": {"roles": "src1"}})
    assert not graph.groups_overflowed({"hasgroups": "true"})        # the claim is a JSON boolean
    assert not graph.groups_overflowed({"_claim_names": ["groups"]})


async def test_all_pages_are_read_with_the_users_token(fake, client):
    fake.pages = [page([gid(1), gid(2)], "{base}/v1.0/me/transitiveMemberOf/microsoft.graph.group?$skiptoken=p2"),
                  page([gid(3)])]
    fake.pages[0][1]["@odata.nextLink"] = fake.pages[0][1]["@odata.nextLink"].format(base=fake.base)
    assert await graph.member_groups(client, fake.base, TOKEN) == [gid(1), gid(2), gid(3)]
    first, second = fake.seen
    assert first.path == graph.GROUPS_PATH
    assert first.query["$select"] == "id" and first.query["$top"] == str(graph.GRAPH_PAGE_SIZE)
    assert second.query["$skiptoken"] == "p2"
    assert {r.headers["Authorization"] for r in fake.seen} == {f"Bearer {TOKEN}"}


async def test_a_base_with_a_path_is_kept(fake, client):
    fake.pages = [page([gid(1)])]
    assert await graph.member_groups(client, fake.base + "/graph/", TOKEN) == [gid(1)]
    assert fake.seen[0].path == "/graph" + graph.GROUPS_PATH


@pytest.mark.parametrize("link", [
    "{other}/v1.0/me/transitiveMemberOf/microsoft.graph.group?$skiptoken=p2",    # another host
    "{base_host_only}.evil.example/v1.0/x",                                      # a look-alike host name
])
async def test_a_next_link_to_another_host_is_refused_not_followed(fake, elsewhere, client, link):
    fake.pages = [page([gid(1)], link.format(other=elsewhere.base, base_host_only=fake.base))]
    with pytest.raises(ProviderError, match=r"not under provider\.microsoft_graph_url"):
        await graph.member_groups(client, fake.base, TOKEN)
    assert elsewhere.seen == [] and len(fake.seen) == 1


async def test_a_next_link_outside_the_configured_path_is_refused(fake, client):
    fake.pages = [page([gid(1)], "{base}/other/v1.0/me")]
    fake.pages[0][1]["@odata.nextLink"] = fake.pages[0][1]["@odata.nextLink"].format(base=fake.base)
    with pytest.raises(ProviderError, match="not under"):
        await graph.member_groups(client, fake.base + "/graph", TOKEN)


async def test_pages_without_end_stop_at_the_page_limit(fake, client):
    fake.pages = [page([gid(1)], "LOOP")]
    fake.pages[0][1]["@odata.nextLink"] = fake.base + graph.GROUPS_PATH + "?$skiptoken=again"
    with pytest.raises(ProviderError, match=f"beyond {graph.GRAPH_PAGES_MAX} pages"):
        await graph.member_groups(client, fake.base, TOKEN)
    assert len(fake.seen) == graph.GRAPH_PAGES_MAX


async def test_more_groups_than_the_limit_are_refused_not_cut_short(fake, client):
    link = fake.base + graph.GROUPS_PATH + "?$skiptoken=more"
    fake.pages = [page([gid(n) for n in range(p * 999, (p + 1) * 999)], link) for p in range(6)]
    with pytest.raises(ProviderError, match=f"more than {graph.GRAPH_GROUPS_MAX} groups"):
        await graph.member_groups(client, fake.base, TOKEN)
    assert len(fake.seen) == 6


@pytest.mark.parametrize("body", [
    {"value": [{"id": "not-a-guid"}]},
    {"value": [{"id": 42}]},
    {"value": [{"displayName": "no id"}]},
    {"value": [gid(1)]},
    {"value": {"id": gid(1)}},
    {"groups": [gid(1)]},
])
async def test_an_answer_that_is_not_a_list_of_groups_fails(fake, client, body):
    fake.pages = [(200, body)]
    with pytest.raises(ProviderError) as info:
        await graph.member_groups(client, fake.base, TOKEN)
    assert not info.value.transient and "User.Read" not in info.value.detail


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refusal_names_the_permission_and_the_scopes(fake, client, status):
    fake.pages = [(status, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}})]
    with pytest.raises(ProviderError) as info:
        await graph.member_groups(client, fake.base, TOKEN)
    assert not info.value.transient
    assert "User.Read" in info.value.detail and "provider.scopes" in info.value.detail


async def test_another_http_error_is_not_called_a_refusal(fake, client):
    fake.pages = [(404, {"error": {"code": "Request_ResourceNotFound"}})]
    with pytest.raises(ProviderError) as info:
        await graph.member_groups(client, fake.base, TOKEN)
    assert info.value.http_status == 404 and "User.Read" not in info.value.detail


async def test_a_failing_graph_is_transient(fake, client):
    fake.pages = [(503, {"error": {"code": "serviceNotAvailable"}})]
    with pytest.raises(ProviderError) as info:
        await graph.member_groups(client, fake.base, TOKEN)
    assert info.value.transient


@pytest.mark.parametrize(("link", "ok"), [
    ("https://graph.microsoft.com/v1.0/me?$skiptoken=x", True),
    ("https://GRAPH.microsoft.com:443/v1.0/me", False),        # another port spelling is another authority here
    ("https://graph.microsoft.com", True),
    ("http://graph.microsoft.com/v1.0/me", False),
    ("https://graph.microsoft.com.evil.example/v1.0/me", False),
    ("https://graph.microsoft.com@evil.example/v1.0/me", False),
    ("https://user@graph.microsoft.com/v1.0/me", False),
    ("https://graph.microsoft.com:8443/v1.0/me", False),
    ("//evil.example/v1.0/me", False),
    ("/v1.0/me", False),
    ("https://graph.microsoft.com/v1.0/../../x", False),
    ("https://graph.microsoft.com/v1.0/%2e%2e/x", False),
    ("https://graph.microsoft.com:bad/v1.0", False),
])
def test_under_the_configured_base(link, ok):
    assert graph.under(link, "https://graph.microsoft.com") is ok


def test_under_a_base_with_a_path():
    assert graph.under("https://g.example/graph/v1.0/me", "https://g.example/graph")
    assert not graph.under("https://g.example/graphs/v1.0/me", "https://g.example/graph")
    assert not graph.under("https://g.example/v1.0/me", "https://g.example/graph")


async def test_a_huge_page_is_refused_unread(fake, client):
    fake.pages = [page([gid(n) for n in range(40_000)])]           # ~2.6 MB of JSON in one answer
    with pytest.raises(ProviderError) as info:
        await graph.member_groups(client, fake.base, TOKEN)
    assert not info.value.transient and "User.Read" not in info.value.detail
