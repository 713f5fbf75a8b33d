"""Access rules: who may pass once signed in, which requests pass without anyone, and CORS on denials.

``authorize(identity, rules)`` applies one ``AuthorizationConfig``: every list that is not empty must
be satisfied by one of its entries (a user must match every non-empty list); all lists empty lets any
signed-in user in. An upstream with its own ``authorization`` uses it *instead of* the global rules.
``/oauth2/auth/<name>`` checks the global rules *and* the rule set it names, both (``forward_auth.py``).

Emails are compared case-insensitively and only when well formed: exactly one ``@`` with something
on both sides. ``alice@evil.test@example.com`` matches neither ``example.com`` nor
``evil.test``: mail systems, providers and apps read such addresses differently, so none of them
is trusted. An email the provider marked unverified never reaches here (``Identity.from_claims``
drops it), so it fails every email rule.

``skip_auth`` rules are regular expressions searched in the request's match key (``paths.py``: decoded
once, ambiguous paths already refused with a 400, encoded again, segment parameters removed) together
with the method; the query never takes part. Matching without parameters is what the app behind sees:
Tomcat serves ``/public/app.jsp;x.png`` as ``/public/app.jsp``, so a rule ``[.]png$`` must not match
it. As defence in depth, a request whose *raw* path holds an encoded ``/`` never skips: a path that
takes such tricks to spell is one a client obscured. Such requests simply need a sign-in.

A CORS preflight passes without identity only when ``cors.allow_preflight`` is on, it comes from an
allowed origin and its match key matches one of ``cors.preflight_paths``; like every request sent
without a session, it carries no identity, no ``Authorization`` and no method-override header
(``headers.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web

from .config import AuthorizationConfig, Config, UpstreamConfig

if TYPE_CHECKING:
    from .session import Identity

# The query parameters /oauth2/auth once read as rules. No longer read (a client could add them through an
# ingress that passes its query on); one on a check from nginx's old configuration is refused (forward_auth.py).
QUERY_RULES = ("email_domains", "allowed_emails", "allowed_groups", "allowed_users")
# Response headers a front end on another origin may read from our 401/403 (Fetch §3.2.6).
CORS_EXPOSED = "WWW-Authenticate, X-Request-Id"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``authorize``; ``reason`` is for the operator's log, never shown to the user."""

    allowed: bool
    reason: str


ALLOWED = Decision(True, "allowed")


@dataclass(frozen=True, slots=True)
class Asked:
    """What the request asks for, as policy expressions see it (``policy.py``)."""

    method: str
    path: str
    host: str


def authorize(identity: Identity, rules: AuthorizationConfig, asked: Asked | None = None) -> Decision:
    """Whether ``identity`` satisfies every non-empty list of ``rules``; ``asked``: the request, for the
    expressions in ``rules.rules`` (without it they see empty strings, and a rule on them denies)."""
    email = checked_email(identity.email)
    if rules.email_domains:
        if email is None:
            return Decision(False, "email_domains: no verified, well-formed email")
        domain = email.rpartition("@")[2]
        if "*" not in rules.email_domains and domain not in rules.email_domains:
            return Decision(False, f"email_domains: {domain!r} is not allowed")
    if rules.allowed_emails:
        if email is None:
            return Decision(False, "allowed_emails: no verified, well-formed email")
        if email not in rules.allowed_emails:
            return Decision(False, "allowed_emails: email not listed")
    if rules.allowed_groups and not set(identity.groups) & set(rules.allowed_groups):
        return Decision(False, "allowed_groups: in none of the allowed groups")
    if rules.allowed_users and identity.sub not in rules.allowed_users:
        return Decision(False, "allowed_users: user not listed")
    if rules.rules:
        return _by_expressions(identity, email, rules, asked or Asked("", "", ""))
    return ALLOWED


def _by_expressions(identity: Identity, email: str | None, rules: AuthorizationConfig, asked: Asked) -> Decision:
    """ALLOWED if one of the rules' expressions is true (compiled when the configuration loaded)."""
    from .policy import compile_rule, facts    # only configurations with rules load the CEL library

    seen = facts(identity, email, asked.method, asked.path, asked.host)
    reasons = []
    for i, rule in enumerate(rules.rules):
        allowed, reason = compile_rule(rule).allows(seen)
        if allowed:
            return ALLOWED
        reasons.append(f"rules[{i}]: {reason}")
    return Decision(False, "; ".join(reasons))


def authorize_all(identity: Identity, rule_sets: Iterable[AuthorizationConfig], asked: Asked | None = None) -> Decision:
    """The first denial among ``rule_sets``, or ALLOWED if every one allows."""
    for rules in rule_sets:
        decision = authorize(identity, rules, asked)
        if not decision.allowed:
            return decision
    return ALLOWED


def checked_email(email: str | None) -> str | None:
    """The lowercased email if it has exactly one "@" with a non-empty part on each side, else None."""
    if not email:
        return None
    local, at, domain = email.lower().rpartition("@")
    if not at or not local or not domain or "@" in local:
        return None
    return email.lower()


def rules_for(config: Config, upstream: UpstreamConfig) -> AuthorizationConfig:
    """The upstream's own rules if it has them (they replace the global ones), else the global rules."""
    return upstream.authorization if upstream.authorization is not None else config.authorization


# -- requests that pass without an identity ------------------------------------------------------


def skips_auth(config: Config, request: web.Request, path: str) -> bool:
    """Whether a ``skip_auth`` rule matches this method and match key ``path`` (never the query)."""
    if not config.skip_auth or not _unambiguous(request.raw_path):
        return False
    return any((not rule.methods or request.method in rule.methods) and re.search(rule.path, path)
               for rule in config.skip_auth)


def _unambiguous(raw_path: str) -> bool:
    """False if any segment is a dot segment or hides a "/" or "\\" once decoded."""
    for segment in raw_path.split("?", 1)[0].split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            return False
    return True


def is_preflight(config: Config, request: web.Request, path: str) -> bool:
    """A CORS preflight (Fetch §3.2.2) from an allowed origin to one of ``cors.preflight_paths`` (matched
    on the match key ``path``), when preflights are passed through."""
    cors = config.cors
    return (cors.allow_preflight and request.method == "OPTIONS"
            and "Access-Control-Request-Method" in request.headers and _allowed_origin(config, request) is not None
            and any(re.search(pattern, path) for pattern in cors.preflight_paths))


def is_api_path(config: Config, path: str) -> bool:
    """Whether ``path`` lies under one of ``api_paths`` (whole segments: ``/api`` is not ``/apiary``)."""
    for prefix in config.api_paths:
        base = prefix.rstrip("/")
        if not base or path == base or path.startswith(base + "/"):
            return True
    return False


def cors_headers(config: Config, request: web.Request) -> dict[str, str]:
    """CORS headers for the proxy's own 401/403: the request's origin echoed only if it is allowed."""
    if not config.cors.allowed_origins:
        return {}
    headers = {"Vary": "Origin"}
    origin = _allowed_origin(config, request)
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        if config.cors.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _allowed_origin(config: Config, request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    if origin and origin.lower() in config.cors.allowed_origins:
        return origin
    return None
