"""ZITADEL's role claims as groups.

ZITADEL asserts a project's roles as ``urn:zitadel:iam:org:project:roles`` (or, per project,
``urn:zitadel:iam:org:project:<project id>:roles``): an object keyed by role name, each value an object
of the organisations that granted it (``{"admin": {"<org id>": "<org domain>"}}``). The role names are
the groups. Only that shape is read: a string or a list at that path is not a ZITADEL role claim, and
taking it as one would let whatever put it there name the user's groups — it gives no groups, and a
warning says why, rather than some groups on a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("authproxy.provider")

ROLES_PREFIX = "urn:zitadel:iam:org:project:"
ROLES_SUFFIX = ":roles"


def is_roles_claim(path: str) -> bool:
    return path.startswith(ROLES_PREFIX) and path.endswith(ROLES_SUFFIX)


def roles_as_groups(claims: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``claims`` with the roles object at ``path`` replaced by the list of its role names."""
    if path not in claims:
        return dict(claims)
    roles = claims[path]
    names: list[str] = []
    if isinstance(roles, Mapping) and all(isinstance(grants, Mapping) for grants in roles.values()):
        names = sorted(str(name) for name in roles)
    else:
        log.warning("the %s claim is not an object of roles (%s); no groups taken from it", path, type(roles).__name__)
    return {**claims, path: names}
