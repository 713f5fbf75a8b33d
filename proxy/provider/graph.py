"""Entra ID group memberships from Microsoft Graph, for users whose groups overflow the ID token.

Entra ID puts at most 200 groups in a JWT. A user in more gets no ``groups`` claim at all but an
overage marker instead: ``_claim_names: {"groups": "src1"}`` with ``_claim_sources`` (OIDC Core §5.6.2,
distributed claims), or ``hasgroups: true`` (implicit flow). Signing such a user in without groups
would be wrong both ways — an ``allowed_groups`` rule refuses them, and a policy rule that refuses a
group (``!("contractors" in groups)``) lets them in — so their groups are read from Graph instead, with
the user's own access token, and any failure fails the sign-in (a 502 page naming the cause).

Only ``provider.microsoft_graph_url`` is ever asked, and only below it. The endpoint named in
``_claim_sources`` is not fetched: it comes from the token, Microsoft's docs say not to use it (it
points at the retired Azure AD Graph), and a URL taken from a token is a request forgery waiting to
happen. Graph's ``@odata.nextLink`` pages are followed only while they stay under that same base, for
at most ``GRAPH_PAGES_MAX`` pages and ``GRAPH_GROUPS_MAX`` groups: more is refused, not cut short, since
a partial list is as wrong as none for a rule that refuses a group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import ProviderError
from .client import ProviderClient

# The signed-in user's groups, direct and through nested groups, ids only (Graph API v1.0,
# "List a user's memberships (direct and transitive)": delegated User.Read suffices for /me).
GROUPS_PATH = "/v1.0/me/transitiveMemberOf/microsoft.graph.group"
# Graph's largest page for this list (its default is 100).
GRAPH_PAGE_SIZE = 999
# Bounds on one user's listing: a provider answering pages for ever, or a user in a pathological number
# of groups, stops here with an error rather than holding the sign-in or growing the session without end.
GRAPH_PAGES_MAX = 10
GRAPH_GROUPS_MAX = 5000
# Entra object ids are GUIDs; anything else in the list is not an answer from Graph.
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
STEP = "Microsoft Graph groups"


def groups_overflowed(claims: Mapping[str, Any]) -> bool:
    """Whether the token says the user's groups did not fit in it (and so are not in ``groups``)."""
    names = claims.get("_claim_names")
    return (isinstance(names, Mapping) and "groups" in names) or claims.get("hasgroups") is True


async def member_groups(client: ProviderClient, graph_url: str, access_token: str) -> list[str]:
    """The ids of every group the access token's user is a member of, directly or transitively."""
    base = graph_url.rstrip("/")
    url = f"{base}{GROUPS_PATH}?$select=id&$top={GRAPH_PAGE_SIZE}"
    auth = {"Authorization": f"Bearer {access_token}"}
    groups: list[str] = []
    for _ in range(GRAPH_PAGES_MAX):
        page = await _page(client, url, auth)
        groups.extend(_ids(page))
        if len(groups) > GRAPH_GROUPS_MAX:
            raise ProviderError(STEP, f"the user is in more than {GRAPH_GROUPS_MAX} groups, more than authproxy "
                                "reads; have Entra ID emit only the groups assigned to this application "
                                "(Token configuration: groups assigned to the application)")
        link = page.get("@odata.nextLink")
        if link is None:
            return sorted(set(groups))
        if not isinstance(link, str) or not under(link, base):
            raise ProviderError(STEP, "Graph's next page link is not under provider.microsoft_graph_url; "
                                "not followed")
        url = link
    raise ProviderError(STEP, f"the group list goes on beyond {GRAPH_PAGES_MAX} pages; not read further")


async def _page(client: ProviderClient, url: str, auth: Mapping[str, str]) -> dict[str, Any]:
    try:
        return await client.get_json(STEP, url, headers=auth)
    except ProviderError as exc:
        if exc.http_status not in (401, 403):
            raise
        raise ProviderError(STEP, f"Graph refused to list the user's groups ({exc.detail}); the access token must "
                            "be one for Microsoft Graph with User.Read: keep provider.scopes to openid, email, "
                            "profile and offline_access (or add User.Read), not a scope of another API") from None


def _ids(page: Mapping[str, Any]) -> list[str]:
    value = page.get("value")
    if not isinstance(value, list):
        raise ProviderError(STEP, "the answer has no list of groups (value)")
    ids = [item.get("id") if isinstance(item, Mapping) else None for item in value]
    if not all(isinstance(i, str) and _GUID.fullmatch(i) for i in ids):
        raise ProviderError(STEP, "the answer lists a group without a group id")
    return [str(i) for i in ids]


def under(link: str, base: str) -> bool:
    """Whether ``link`` is ``base`` or below it: same scheme and authority (host, port, no user info),
    path under the base's path. Compared parsed, so ``https://graph.microsoft.com.evil.example``,
    ``https://graph.microsoft.com@evil.example`` and ``/v1.0/../../`` tricks are all refused."""
    try:
        target, root = urlsplit(link), urlsplit(base)
        target_port, root_port = target.port, root.port
    except ValueError:
        return False
    if (target.scheme.lower(), target.hostname, target_port) != (root.scheme.lower(), root.hostname, root_port):
        return False
    if target.username is not None or target.password is not None or target.fragment:
        return False
    path = target.path
    if "/.." in path or "/./" in path or "\\" in path or "%2e" in path.lower():
        return False
    return path == root.path or path.startswith(root.path.rstrip("/") + "/")
