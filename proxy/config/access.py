"""Who reaches what: the ``upstreams`` (with their TLS and own ``authorization``), the ``authorization``
rules, ``skip_auth`` and ``cors`` sections.

Together because each decides, per request, whether and where it goes: the gate (``gate.py``,
``authz.py``, ``paths.py``) and the upstream client (``upstream.py``) read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from .base import _Model
from .values import (Duration, Loc, PositiveDuration, _absolute_path, _existing_file, _lower, _origin, _regex,
                     _upper_all, _upstream_url)


class AuthorizationConfig(_Model):
    """Who may pass once signed in. Every list that is not empty must be satisfied by one of its
    entries; all lists empty means any signed-in user."""

    email_domains: list[Annotated[str, BeforeValidator(_lower)]] = []
    allowed_emails: list[Annotated[str, BeforeValidator(_lower)]] = []
    allowed_groups: list[str] = []
    allowed_users: list[str] = []

    @property
    def restricts(self) -> bool:
        return bool(self.email_domains or self.allowed_emails or self.allowed_groups or self.allowed_users)


class TLSConfig(_Model):
    """How authproxy checks an https upstream's certificate."""

    ca_file: Annotated[str, AfterValidator(_existing_file)] | None = None
    insecure_skip_verify: bool = False


class UpstreamConfig(_Model):
    """One app behind the proxy, chosen by the longest matching path prefix."""

    path: Annotated[str, AfterValidator(_absolute_path)]
    url: Annotated[str, AfterValidator(_upstream_url)]
    strip_prefix: bool = False
    pass_host_header: bool = True
    timeout: PositiveDuration = 30.0
    connect_timeout: PositiveDuration = 5.0
    tls: TLSConfig = TLSConfig()
    websockets: bool = True
    flush_interval: Duration = 0.0
    authorization: AuthorizationConfig | None = None


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
