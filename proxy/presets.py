"""Provider presets: the endpoints, scopes and claim names of well-known providers, filled in for the operator.

A preset only supplies defaults: anything the operator writes under ``provider`` wins, so a
preset's endpoints can be overridden (GitHub Enterprise, a test double). After expansion every
provider is one of two protocols — ``oidc`` (discovery, ID token) or ``oauth2`` (explicit
endpoints, identity from a userinfo API) — and nothing else in authproxy knows about presets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

PRESETS = ("github", "google", "microsoft", "gitlab", "keycloak")

# Tenants whose tokens carry each user's own tenant as issuer, so the issuer cannot be checked.
_MULTI_TENANT = ("common", "organizations", "consumers")


def protocol_of(provider_type: str) -> str:
    return "oauth2" if provider_type in ("oauth2", "github") else "oidc"


def problems(kind: str, tenant: str | None, issuer: str | None) -> Iterator[tuple[str, str]]:
    """(key, message) for what a preset needs that only the operator can know."""
    if kind == "microsoft" and not tenant:
        yield "tenant", ('type microsoft needs the directory (tenant) ID; add tenant: "<your tenant id>" '
                         "from the Entra admin centre")
    elif kind == "microsoft" and str(tenant).lower() in _MULTI_TENANT:
        yield "tenant", (f"tenant {tenant!r} signs users in from any directory, so the ID token's issuer "
                         "cannot be checked; use your own tenant ID")
    if kind == "keycloak" and not issuer:
        yield "issuer", ('type keycloak needs the realm URL as issuer, e.g. issuer: '
                         '"https://keycloak.example.com/realms/myrealm"')


def expand(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (the YAML ``provider`` mapping) with the preset's defaults under the operator's values."""
    kind = data.get("type", "oidc")
    if kind not in PRESETS:
        return dict(data)
    defaults = _DEFAULTS[kind](data)
    merged = {**defaults, **{k: v for k, v in data.items() if v is not None}}
    claims = data.get("claims")
    merged["claims"] = {**defaults.get("claims", {}), **claims} if isinstance(claims, Mapping) else claims \
        if claims is not None else defaults.get("claims", {})
    return merged


def _github(data: Mapping[str, Any]) -> dict[str, Any]:
    """GitHub OAuth apps: no ID token; identity from ``/user``, email from ``/user/emails`` if private;
    with ``github_groups`` also ``read:org``, for ``/user/orgs`` and ``/user/teams``.
    ``base_url`` points at GitHub Enterprise Server (its API lives under ``/api/v3``)."""
    base = str(data.get("base_url") or "https://github.com").rstrip("/")
    api = "https://api.github.com" if base == "https://github.com" else base + "/api/v3"
    return {"authorization_endpoint": base + "/login/oauth/authorize",
            "token_endpoint": base + "/login/oauth/access_token",
            "userinfo_endpoint": api + "/user",
            "scopes": ["read:user", "user:email", *(["read:org"] if data.get("github_groups") else [])],
            "claims": {"user": "id", "preferred_username": "login", "email": "email", "name": "name"}}


def _google(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"issuer": "https://accounts.google.com", "scopes": ["openid", "email", "profile"]}


def _microsoft(data: Mapping[str, Any]) -> dict[str, Any]:
    """Microsoft Entra ID v2.0 endpoints for one tenant."""
    tenant = data.get("tenant")
    if not tenant or str(tenant).lower() in _MULTI_TENANT:
        return {}                      # reported by problems()
    return {"issuer": f"https://login.microsoftonline.com/{tenant}/v2.0",
            "scopes": ["openid", "email", "profile", "offline_access"]}


def _gitlab(data: Mapping[str, Any]) -> dict[str, Any]:
    """GitLab.com or a self-hosted GitLab at ``base_url``; groups come from userinfo."""
    base = str(data.get("base_url") or "https://gitlab.com").rstrip("/")
    return {"issuer": base, "scopes": ["openid", "email", "profile"], "use_userinfo": True,
            "claims": {"preferred_username": "nickname", "groups": "groups"}}


def _keycloak(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keycloak: the issuer is the realm URL, e.g. https://kc.example.com/realms/myrealm."""
    return {"scopes": ["openid", "email", "profile", "offline_access"], "claims": {"groups": "groups"}}


_DEFAULTS = {"github": _github, "google": _google, "microsoft": _microsoft, "gitlab": _gitlab,
             "keycloak": _keycloak}
