"""Claims from the userinfo endpoint (OIDC Core §5.3), or a plain OAuth 2.0 provider's user API.

Apart from the grants because one provider needs more calls: GitHub shows an email in ``/user``
only if the user made it public; otherwise the primary verified address comes from ``/user/emails``
(which needs the ``user:email`` scope). GitHub has no groups claim: with ``provider.github_groups`` the
user's organisations (``/user/orgs``) and teams (``/user/teams``, as ``org/team-slug``) become the
``groups`` claim, so ``allowed_groups`` and policy rules work as with any provider.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import ProviderError
from .client import ProviderClient

log = logging.getLogger("authproxy.provider")


# GitHub lists at most 100 per page; a user in more than GITHUB_PAGES_MAX pages of teams is cut there.
GITHUB_PER_PAGE = 100
GITHUB_PAGES_MAX = 10


async def fetch_userinfo(client: ProviderClient, endpoint: str, provider_type: str,
                         access_token: str, *, github_groups: bool = False) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {access_token}"}
    claims = await client.get_json("userinfo", endpoint, headers=auth)
    if provider_type == "github" and not claims.get("email"):
        claims["email"] = await _github_primary_email(client, endpoint.rstrip("/") + "/emails", auth)
    if provider_type == "github" and github_groups:
        claims["groups"] = await _github_groups(client, endpoint.rstrip("/"), auth)
    return claims


async def _github_groups(client: ProviderClient, user_api: str, auth: Mapping[str, str]) -> list[str]:
    """``org`` for each organisation, ``org/team-slug`` (and ``org``) for each team. A refusal fails the
    sign-in with what to fix, rather than signing the user in without groups: rules on groups would
    then refuse everyone with a 403 that hides the cause."""
    groups: set[str] = set()
    for org in await _github_pages(client, user_api + "/orgs", auth):
        if isinstance(org, dict) and isinstance(org.get("login"), str):
            groups.add(org["login"])
    for team in await _github_pages(client, user_api + "/teams", auth):
        org = team.get("organization") if isinstance(team, dict) else None
        if isinstance(org, dict) and isinstance(org.get("login"), str) and isinstance(team.get("slug"), str):
            groups.update((org["login"], f"{org['login']}/{team['slug']}"))
    return sorted(groups)


async def _github_pages(client: ProviderClient, url: str, auth: Mapping[str, str]) -> list[Any]:
    items: list[Any] = []
    for page in range(1, GITHUB_PAGES_MAX + 1):
        try:
            batch = await client.call("userinfo", "GET", f"{url}?per_page={GITHUB_PER_PAGE}&page={page}",
                                      headers=auth, as_list=True)
        except ProviderError as exc:
            if exc.transient:
                raise
            raise ProviderError("userinfo", f"GitHub refused /user/{url.rsplit('/', 1)[-1]} ({exc.detail}): "
                                "github_groups needs the read:org scope (a GitHub App: Organization "
                                "permissions, Members: Read-only)") from None
        if not isinstance(batch, list):
            break
        items.extend(batch)
        if len(batch) < GITHUB_PER_PAGE:
            break
    return items


async def _github_primary_email(client: ProviderClient, url: str, auth: Mapping[str, str]) -> str | None:
    """The primary verified address, or None: an email is optional, so a refusal (no
    ``user:email`` scope, a GitHub App without the email permission) must not fail the login."""
    try:
        emails = await client.call("userinfo", "GET", url, headers=auth, as_list=True)
    except ProviderError as exc:
        log.warning("no email from %s: %s", url, exc.detail)
        return None
    primary = [e for e in emails if isinstance(e, dict) and e.get("primary") and e.get("verified")]
    return primary[0]["email"] if primary and isinstance(primary[0].get("email"), str) else None
