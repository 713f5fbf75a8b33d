"""Claims from the userinfo endpoint (OIDC Core §5.3), or a plain OAuth 2.0 provider's user API.

Apart from the grants because one provider needs a second call: GitHub shows an email in ``/user``
only if the user made it public; otherwise the primary verified address comes from ``/user/emails``
(which needs the ``user:email`` scope).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import ProviderError
from .client import ProviderClient

log = logging.getLogger("authproxy.provider")


async def fetch_userinfo(client: ProviderClient, endpoint: str, provider_type: str,
                         access_token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {access_token}"}
    claims = await client.get_json("userinfo", endpoint, headers=auth)
    if provider_type == "github" and not claims.get("email"):
        claims["email"] = await _github_primary_email(client, endpoint.rstrip("/") + "/emails", auth)
    return claims


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
