"""Provider presets: the endpoints, scopes and claim names of well-known providers, filled in for the operator.

A preset only supplies defaults: anything the operator writes under ``provider`` wins, so a
preset's endpoints can be overridden (GitHub Enterprise, a test double). After expansion every
provider is one of two protocols — ``oidc`` (discovery, ID token) or ``oauth2`` (explicit
endpoints, identity from a userinfo API) — and nothing else in authproxy knows about presets.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

PRESETS = ("github", "google", "microsoft", "gitlab", "keycloak", "dex", "authentik", "zitadel",
           "django-oauth-toolkit")

# Microsoft Graph of Microsoft's global cloud; national clouds have their own (provider.microsoft_graph_url).
MICROSOFT_GRAPH = "https://graph.microsoft.com"
# Where authentik serves an application's OpenID provider: <origin>/application/o/<slug>/.
AUTHENTIK_APPLICATION_PATH = "/application/o/"

# Tenants whose tokens carry each user's own tenant as issuer, so the issuer cannot be checked.
_MULTI_TENANT = ("common", "organizations", "consumers")


def protocol_of(provider_type: str) -> str:
    return "oauth2" if provider_type in ("oauth2", "github") else "oidc"


def problems(kind: str, tenant: str | None, issuer: str | None, *, discovers: bool = True) -> Iterator[tuple[str, str]]:
    """(key, message) for what a preset needs that only the operator can know. ``discovers``: the
    endpoints come from discovery below the issuer (not all given explicitly)."""
    if kind == "microsoft" and not tenant:
        yield "tenant", ('type microsoft needs the directory (tenant) ID; add tenant: "<your tenant id>" '
                         "from the Entra admin centre")
    elif kind == "microsoft" and str(tenant).lower() in _MULTI_TENANT:
        yield "tenant", (f"tenant {tenant!r} signs users in from any directory, so the ID token's issuer "
                         "cannot be checked; use your own tenant ID")
    if kind == "keycloak" and not issuer:
        yield "issuer", ('type keycloak needs the realm URL as issuer, e.g. issuer: '
                         '"https://keycloak.example.com/realms/myrealm"')
    if kind in _NEEDS_ISSUER and not issuer:
        yield "issuer", _NEEDS_ISSUER[kind]
    if kind == "authentik" and issuer and discovers and AUTHENTIK_APPLICATION_PATH not in issuer:
        yield "issuer", (f"{issuer!r} is not an authentik application's issuer: authentik serves one OpenID "
                         f"provider per application, at <origin>{AUTHENTIK_APPLICATION_PATH}<application slug>/ "
                         "(the provider's page shows it as \"OpenID Configuration Issuer\"); set that")
    if kind == "django-oauth-toolkit" and not issuer:
        yield "base_url", ('type django-oauth-toolkit needs the Django site\'s origin, e.g. base_url: '
                           '"https://app.example.com" (the issuer is then <base_url>/o, where the toolkit\'s '
                           'URLs are usually included; if yours are elsewhere, set issuer instead)')


# What only the operator knows, for the presets whose issuer is their own deployment's URL.
_NEEDS_ISSUER = {
    "dex": 'type dex needs Dex\'s issuer, the "issuer" value of its configuration, e.g. issuer: '
           '"https://dex.example.com/dex"',
    "authentik": ("type authentik needs the application's issuer, e.g. issuer: "
                  f'"https://authentik.example.com{AUTHENTIK_APPLICATION_PATH}myapp/" (with the trailing slash '
                  "authentik writes)"),
    "zitadel": ('type zitadel needs the instance\'s issuer, its domain, e.g. issuer: '
                '"https://myinstance.zitadel.cloud"'),
}


def expand(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (the YAML ``provider`` mapping) with the preset's defaults under the operator's values."""
    kind = data.get("type", "oidc")
    if kind not in PRESETS:
        return dict(data)
    defaults = _DEFAULTS[kind](data)
    merged = {**defaults, **{k: v for k, v in data.items() if v is not None}}
    for name in ("claims", "extra_authorize_params"):      # merged key by key: the operator's keys win
        given = data.get(name)
        merged[name] = {**defaults.get(name, {}), **given} if isinstance(given, Mapping) else given \
            if given is not None else defaults.get(name, {})
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
    """Google; with one ``google_hosted_domains`` entry, ``hd`` asks Google to offer only accounts of that
    Workspace domain. Only a hint to the account chooser: the ID token's ``hd`` is what is checked."""
    domains = data.get("google_hosted_domains")
    hint = {"hd": str(domains[0]).strip().lower()} if isinstance(domains, list) and len(domains) == 1 else {}
    return {"issuer": "https://accounts.google.com", "scopes": ["openid", "email", "profile"],
            "extra_authorize_params": hint}


def _microsoft(data: Mapping[str, Any]) -> dict[str, Any]:
    """Microsoft Entra ID v2.0 endpoints for one tenant; Graph for groups that overflow the ID token."""
    tenant = data.get("tenant")
    if not tenant or str(tenant).lower() in _MULTI_TENANT:
        return {}                      # reported by problems()
    return {"issuer": f"https://login.microsoftonline.com/{tenant}/v2.0",
            "scopes": ["openid", "email", "profile", "offline_access"], "microsoft_graph_url": MICROSOFT_GRAPH}


def _gitlab(data: Mapping[str, Any]) -> dict[str, Any]:
    """GitLab.com or a self-hosted GitLab at ``base_url``; groups come from userinfo."""
    base = str(data.get("base_url") or "https://gitlab.com").rstrip("/")
    return {"issuer": base, "scopes": ["openid", "email", "profile"], "use_userinfo": True,
            "claims": {"preferred_username": "nickname", "groups": "groups"}}


def _keycloak(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keycloak: the issuer is the realm URL, e.g. https://kc.example.com/realms/myrealm."""
    return {"scopes": ["openid", "email", "profile", "offline_access"], "claims": {"groups": "groups"}}


def _dex(data: Mapping[str, Any]) -> dict[str, Any]:
    """Dex: groups come only with the ``groups`` scope, a refresh token only with ``offline_access``."""
    return {"scopes": ["openid", "email", "profile", "groups", "offline_access"], "claims": {"groups": "groups"}}


def _authentik(data: Mapping[str, Any]) -> dict[str, Any]:
    """authentik: one issuer per application; its ``profile`` scope carries the user's groups."""
    return {"scopes": ["openid", "email", "profile", "offline_access"], "claims": {"groups": "groups"}}


def _zitadel(data: Mapping[str, Any]) -> dict[str, Any]:
    """ZITADEL: the project's roles, an object keyed by role name, are the groups (provider/zitadel.py).
    Unless an application is set to put them in the ID token, ZITADEL gives profile, email and roles to
    the code flow only from userinfo, so userinfo is asked (at sign-in and at each refresh)."""
    return {"scopes": ["openid", "email", "profile", "offline_access"], "use_userinfo": True,
            "claims": {"groups": "urn:zitadel:iam:org:project:roles"}}


def _django_oauth_toolkit(data: Mapping[str, Any]) -> dict[str, Any]:
    """django-oauth-toolkit: the issuer is ``<origin>/o`` as its docs mount it; ``sub`` is the user's
    primary key, which stays the user (OIDC Core §2): stable where a username or an email may change."""
    base = data.get("base_url")
    return {"scopes": ["openid", "email", "profile"],
            **({"issuer": str(base).rstrip("/") + "/o"} if base else {})}


_DEFAULTS = {"github": _github, "google": _google, "microsoft": _microsoft, "gitlab": _gitlab,
             "keycloak": _keycloak, "dex": _dex, "authentik": _authentik, "zitadel": _zitadel,
             "django-oauth-toolkit": _django_oauth_toolkit}
