"""Google Workspace: only accounts of the configured domains (``provider.google_hosted_domains``).

Google signs in any Google account — a Workspace account of any organisation, or a personal one. Its
ID token carries ``hd``, the Workspace domain of the account, and no ``hd`` at all for a personal
(consumer) account, whatever its email address says. So the domain is checked on the verified ID
token's ``hd`` and nothing else: not the email's domain (a personal account may carry a work address),
not userinfo (fetched with a bearer token, not signed), and not the ``hd`` authorization parameter,
which only narrows Google's account chooser and is the user's to edit. Google's OpenID Connect guide:
"be sure to validate that the returned ID token has an hd claim value that matches what you expect".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import AccountRefused


def check_hosted_domain(id_token_claims: Mapping[str, Any], domains: Sequence[str]) -> None:
    """Refuse (``AccountRefused``, a 403 page) an ID token whose ``hd`` is not one of ``domains``
    (already lower-case); no check when none are configured."""
    if not domains:
        return
    hd = id_token_claims.get("hd")
    if isinstance(hd, str) and hd.lower() in domains:
        return
    which = ", ".join(domains)
    if not isinstance(hd, str) or not hd:
        raise AccountRefused("hd_missing", f"This is a personal Google account; sign in with your account of {which}.")
    raise AccountRefused("hd_other", f"This Google account belongs to another organisation; sign in with your "
                         f"account of {which}.")
