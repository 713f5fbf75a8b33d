"""Who reaches what: the ``upstreams`` (with their TLS and own ``authorization``), the ``authorization``
rules, ``skip_auth`` and ``cors`` sections.

Together because each decides, per request, whether and where it goes: the gate (``gate.py``,
``authz.py``, ``paths.py``) and the upstream client (``upstream.py``) read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator

from .base import _Model
from .values import (Duration, Loc, PositiveDuration, _absolute_path, _existing_file, _lower, _origin, _regex,
                     _upper_all, _upstream_url)


def _expression(source: str) -> str:
    """A CEL expression that compiles and names only known variables (``policy.check``)."""
    from ..policy import check             # the policy module, and its library, only where rules are used

    problem = check(source)
    if problem is not None:
        raise ValueError(problem)
    return source


class PolicyCase(_Model):
    """A test of an ``authorization`` section: the provider's claims and a request in, allow or deny out."""

    claims: dict[str, Any]
    method: str = "GET"
    path: str = "/"
    host: str = ""
    allow: bool


def _acr_value(value: str) -> str:
    """One ``acr`` value: it goes into ``acr_values``, a space-separated list (OIDC Core §3.1.2.1), and into
    a ``WWW-Authenticate`` quoted string (RFC 9470 §3), so printable ASCII without spaces or quotes."""
    if not _ACR_VALUE.fullmatch(value):
        raise ValueError(f"must be one acr value without spaces, quotes or backslashes, as the provider names it, "
                         f'e.g. "urn:example:mfa" or "2"; got {value[:80]!r}')
    return value


def _acr_list(values: list[str] | None) -> list[str] | None:
    if values is not None and not values:
        raise ValueError('is empty: list the acr values that may pass (any one will do), e.g. ["urn:example:mfa"], '
                         "or leave the key out")
    if values is not None and len(" ".join(values)) > MAX_ACR_VALUES_CHARS:
        raise ValueError(f"lists more than {MAX_ACR_VALUES_CHARS} characters of acr values; they travel in the "
                         "sign-in's login cookie and URL: list only the values this route accepts")
    return values


def _auth_age(seconds: float | None) -> float | None:
    if seconds is not None and (seconds < 1 or seconds != int(seconds)):
        raise ValueError('must be a whole number of seconds, at least 1 (max_age is sent in seconds); write e.g. '
                         '"15m" or 900')
    return seconds


# Longest ``acr`` list, joined with spaces as ``acr_values``: what a sign-in link may pass too
# (``authorize_params.MAX_PARAMETER_CHARS``), so the login cookie that keeps it always fits.
MAX_ACR_VALUES_CHARS = 256
# An acr value as it may appear in acr_values and in a WWW-Authenticate quoted string.
_ACR_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")


class AuthorizationConfig(_Model):
    """Who may pass once signed in. Every list that is not empty must be satisfied by one of its
    entries (for ``rules``: one expression true); all lists empty means any signed-in user. ``tests``
    are run when the configuration loads: a section that does not decide as they say stops start-up.

    ``acr`` and ``max_auth_age`` ask *how* the user signed in (step-up, ``stepup.py``): the session's
    sign-in must have one of the ``acr`` values and be at most ``max_auth_age`` old, or the user is sent
    to sign in again asking for them (an API client gets RFC 9470's 401)."""

    email_domains: list[Annotated[str, BeforeValidator(_lower)]] = []
    allowed_emails: list[Annotated[str, BeforeValidator(_lower)]] = []
    allowed_groups: list[str] = []
    allowed_users: list[str] = []
    rules: list[Annotated[str, AfterValidator(_expression)]] = []
    tests: list[PolicyCase] = []
    acr: Annotated[list[Annotated[str, AfterValidator(_acr_value)]] | None, AfterValidator(_acr_list),
                   Field(description="acr values of which the sign-in must have one (OIDC acr claim); "
                                     "else the user signs in again with acr_values")] = None
    max_auth_age: Annotated[Duration | None, AfterValidator(_auth_age),
                            Field(description="how long ago the user may have signed in (auth_time); "
                                              "older: sign in again with max_age")] = None

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        from ..policy import run_case

        for i, case in enumerate(self.tests):
            allowed, reason = run_case(self, case.claims, case.method.upper(), case.path, case.host)
            if allowed != case.allow:
                yield ("tests", i), (f"expected {'allow' if case.allow else 'deny'}, the section "
                                     f"{'allows' if allowed else 'denies'} ({reason}); fix the rules or the test")

    @property
    def restricts(self) -> bool:
        return bool(self.email_domains or self.allowed_emails or self.allowed_groups or self.allowed_users
                    or self.rules)


def _header_name(name: str) -> str:
    from ..identity import header_name_problem      # the rules live with the templates they protect

    problem = header_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def _header_source(source: str | dict[str, str] | None) -> str | dict[str, str] | None:
    from ..identity import source_problem

    problem = source_problem(source)
    if problem is not None:
        raise ValueError(problem)
    return source


def _non_empty_text(value: str) -> str:
    if not value.strip():
        raise ValueError('must not be empty; write the audience the app checks, e.g. "https://wiki.internal"')
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
# A claim path, {value: text}, {claim: path}, {basic: path} or null (identity.py says what each sends).
HeaderSource = Annotated[str | dict[str, str] | None, AfterValidator(_header_source)]
# Assertions are short-lived proofs: an hour is already long for one that cannot be revoked.
ASSERTION_LIFETIME_MAX = 3600.0


class IdentityHeadersConfig(_Model):
    """Which headers tell the app who the user is, and where its tokens go (``identity.py``): a preset,
    then explicit headers that add to it, replace its values or (``null``) remove them."""

    preset: Annotated[Literal["x-forwarded", "x-auth-request", "remote-user", "basic", "none"],
                      BeforeValidator(_lower)] = "x-forwarded"
    headers: dict[str, HeaderSource] = {}
    pass_access_token: bool = True
    access_token_header: HeaderName | None = None
    id_token_header: HeaderName | None = None

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        from ..identity import template_problems

        yield from template_problems(self)


class IdentityAssertionConfig(_Model):
    """A signed JWT that says who the user is (``assertion.py``), in a header the operator names."""

    header: HeaderName
    audience: Annotated[str, AfterValidator(_non_empty_text)] | None = None
    lifetime: PositiveDuration = 60.0

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.lifetime > ASSERTION_LIFETIME_MAX:
            yield ("lifetime",), (f"{self.lifetime:g} s is longer than an assertion should live (it cannot be "
                                  f"revoked); write at most \"1h\", e.g. \"60s\"")


# The names a rule set may have: one path segment of ``/oauth2/auth/<name>``, never one of the endpoint's
# own words (``forward_auth.py``).
_RULE_SET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
RESERVED_RULE_SET_NAMES = frozenset({"redirect", "envoy"})


class RuleSet(AuthorizationConfig):
    """Rules an ingress names in the forward-auth path, ``/oauth2/auth/<name>``: checked on top of the global
    ``authorization``, as the query's rules were before an ingress (Caddy) could pass a client's query there."""

    name: str

    @field_validator("name")
    @classmethod
    def _segment(cls, value: str) -> str:
        if not _RULE_SET_NAME.fullmatch(value):
            raise ValueError(f"must be 1 to 64 letters, digits, '-' or '_' (one path segment); got {value!r}")
        if value in RESERVED_RULE_SET_NAMES:
            raise ValueError(f"{value!r} is a word of the /oauth2/auth endpoint itself; choose another name")
        return value


class ForwardAuthConfig(_Model):
    """``/oauth2/auth``, the check an ingress (nginx, Traefik, Caddy, Envoy, HAProxy) makes before each request."""

    rule_sets: list[RuleSet] = []
    access_token: bool = False

    @field_validator("rule_sets")
    @classmethod
    def _distinct_names(cls, rule_sets: list[RuleSet]) -> list[RuleSet]:
        seen: set[str] = set()
        for rule_set in rule_sets:
            if rule_set.name in seen:
                raise ValueError(f"the name {rule_set.name!r} is used twice; each rule set needs its own")
            seen.add(rule_set.name)
        return rule_sets

    def rule_set(self, name: str) -> RuleSet | None:
        return next((rule_set for rule_set in self.rule_sets if rule_set.name == name), None)


class TLSConfig(_Model):
    """How authproxy checks an https upstream's certificate."""

    ca_file: Annotated[str, AfterValidator(_existing_file)] | None = None
    insecure_skip_verify: bool = False


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if not _HOST_NAME.fullmatch(value):
        raise ValueError(f"must be a host name such as wiki.example.com (no scheme, port or path); got {value!r}")
    return value


_HOST_NAME = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")


class UpstreamConfig(_Model):
    """One app behind the proxy, chosen by its ``host`` (when set, before any upstream without one) and then
    the longest matching path prefix."""

    path: Annotated[str, AfterValidator(_absolute_path)]
    url: Annotated[str, AfterValidator(_upstream_url)]
    host: Annotated[str, AfterValidator(_host_name)] | None = None
    strip_prefix: bool = False
    pass_host_header: bool = True
    timeout: PositiveDuration = 30.0
    connect_timeout: PositiveDuration = 5.0
    tls: TLSConfig = TLSConfig()
    websockets: bool = True
    flush_interval: Duration = 0.0
    authorization: AuthorizationConfig | None = None
    identity_headers: IdentityHeadersConfig | None = None
    identity_assertion: IdentityAssertionConfig | None = None


class SkipAuthRule(_Model):
    """Requests that pass without a session — and without any identity or Bearer header."""

    path: Annotated[str, AfterValidator(_regex)]
    methods: Annotated[list[str], BeforeValidator(_upper_all)] = []


class CorsConfig(_Model):
    """CORS headers on the proxy's own 401/403 answers, and unauthenticated preflights."""

    allowed_origins: list[Annotated[str, AfterValidator(_origin)]] = []
    allow_credentials: bool = True
    allow_preflight: bool = False
    preflight_paths: list[Annotated[str, AfterValidator(_regex)]] = []

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.allow_preflight and not self.preflight_paths:
            yield ("preflight_paths",), ("allow_preflight forwards preflights without a session only to the paths "
                                         'listed here; list the app\'s cross-origin API, e.g. ["^/api/"]')
