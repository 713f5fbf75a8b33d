"""``Config``, the root model: its sections, the top-level keys and the small ``limits`` and ``logging``
sections; the larger sections each have a module (``provider``, ``sessions``, ``access``).

The schema ``authproxy config-schema`` prints is ``Config.model_json_schema()``: the models' names,
docstrings and fields, wherever their module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, field_validator

from .access import (AuthorizationConfig, CorsConfig, ForwardAuthConfig, IdentityHeadersConfig, SkipAuthRule,
                     UpstreamConfig)
from .base import _CrossFieldProblems, _Model
from .provider import ProviderConfig
from .sessions import CookieConfig, SessionConfig
from .tracing import TracingConfig
from .values import (CALLBACK_PATH, Duration, Loc, PositiveDuration, _absolute_path, _cidr, _lower, _origin,
                     _public_url, _split_listen, _templates_dir, _workers)


def _count(low: int, high: int, example: int) -> AfterValidator:
    """An integer between ``low`` and ``high``, with a message that says so and gives an example."""
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}; got {value}, e.g. write {example}")
        return value
    return AfterValidator(check)


# An entry of ``allowed_hosts``: a host name, or ".example.com" for it and every name under it; then no port
# (the scheme's default), a port, or ":*" for any.
_ALLOWED_HOST = re.compile(r"(\.?)([a-z0-9-]+(?:\.[a-z0-9-]+)*)(?::([0-9]{1,5}|\*))?")


def _allowed_host(value: str) -> str:
    value = value.strip().lower()
    if not _ALLOWED_HOST.fullmatch(value):
        raise ValueError(f'must be a host name, or ".example.com" for a domain and its subdomains, optionally with '
                         f'":port" or ":*" (no scheme or path); got {value!r}')
    return value


def domain_covers(domain: str, host: str) -> bool:
    """Whether a cookie for ``domain`` is sent to ``host`` (RFC 6265 §5.1.3 domain-match)."""
    domain = domain.lstrip(".").lower()
    return host == domain or host.endswith("." + domain)


class LimitsConfig(_Model):
    """What one client may hold of a worker process: time, connections, sizes (``connections.py`` and
    ``websocket.py`` say how each is enforced). The defaults follow nginx: ``client_header_timeout``,
    ``client_body_timeout`` and ``send_timeout`` 60 s, ``keepalive_timeout`` 75 s."""

    header_timeout: PositiveDuration = 60.0
    keepalive_timeout: PositiveDuration = 75.0
    body_timeout: PositiveDuration = 60.0
    send_timeout: PositiveDuration = 60.0
    max_connections: Annotated[int, _count(1, 1_000_000, 4096)] = 4096
    max_header_size: Annotated[int, _count(8192, 16 << 20, 65536)] = 64 * 1024
    websocket_max_message: Annotated[int, _count(1024, 1 << 30, 1048576)] = 4 * 1024 * 1024
    websockets_per_session: Annotated[int, _count(1, 10000, 32)] = 32
    # The express lane (express.py): common signed-in GETs served without aiohttp's request machinery.
    express: bool = True


class LoggingConfig(_Model):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = "text"


class ListenTLSConfig(_Model):
    """TLS on ``listen`` (``proxy/tls.py``): the certificate and key, reloaded when they change, Mozilla's
    intermediate defaults, and optionally a plain-HTTP listener that redirects to https."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    reload_interval: PositiveDuration = 5.0
    redirect_http_listen: str | None = None

    @field_validator("redirect_http_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            _split_listen(value)
        return value


class Config(_Model):
    """The whole configuration; build it with :func:`load_config` or :func:`parse_config`."""

    listen: str = "0.0.0.0:4180"
    public_url: Annotated[str, AfterValidator(_public_url)]
    provider: ProviderConfig
    cookie: CookieConfig
    upstreams: list[UpstreamConfig]
    session: SessionConfig = SessionConfig()
    authorization: AuthorizationConfig = AuthorizationConfig()
    identity_headers: IdentityHeadersConfig = IdentityHeadersConfig()
    forward_auth: ForwardAuthConfig = ForwardAuthConfig()
    api_paths: list[Annotated[str, AfterValidator(_absolute_path)]] = []
    skip_auth: list[SkipAuthRule] = []
    cors: CorsConfig = CorsConfig()
    websocket_origins: list[Annotated[str, AfterValidator(_origin)]] = []
    trusted_proxies: list[Annotated[str, AfterValidator(_cidr)]] = []
    allowed_hosts: list[Annotated[str, AfterValidator(_allowed_host)]] = []
    templates_dir: Annotated[str, AfterValidator(_templates_dir)] | None = None
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown_timeout: Duration = 30.0
    workers: Annotated[int | Literal["auto"], AfterValidator(_workers)] = 1
    metrics_listen: str | None = None
    metrics_on_listen: bool = False
    tls: ListenTLSConfig | None = None

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        from ..identity import assertion_problems

        yield from assertion_problems(self)
        yield from self._host_problems()
        if self.provider.response_mode == "form_post" and not self.cookie.secure:
            yield ("provider", "response_mode"), ("form_post needs cookie.secure: true: the login cookie must be "
                                                  "SameSite=None to come with the provider's cross-site POST, and "
                                                  "browsers drop such cookies unless they are Secure")
        if self.metrics_on_listen and self.metrics_listen is not None:
            yield ("metrics_on_listen",), ("metrics_listen already serves /metrics on its own port; set "
                                           "metrics_on_listen: false, or remove metrics_listen to serve them on listen")
        yield from self._tls_problems()
        yield from self._step_up_problems()

    def _step_up_problems(self) -> Iterator[tuple[Loc, str]]:
        """Step-up judges the ID token's ``acr`` and ``auth_time``: a plain OAuth 2.0 provider (GitHub) gives
        none, so a route asking for them could never be met — each sign-in would send the user back again."""
        if self.provider.protocol == "oidc":
            return
        sections: list[tuple[Loc, AuthorizationConfig]] = [(("authorization",), self.authorization)]
        sections += [(("upstreams", i, "authorization"), upstream.authorization)
                     for i, upstream in enumerate(self.upstreams) if upstream.authorization is not None]
        sections += [(("forward_auth", "rule_sets", i), rule_set)
                     for i, rule_set in enumerate(self.forward_auth.rule_sets)]
        for loc, rules in sections:
            for key in ("acr", "max_auth_age"):
                if getattr(rules, key) is not None:
                    yield (*loc, key), (f"needs an OpenID Connect provider, whose ID token says how the user signed "
                                        f"in; provider.type {self.provider.type} has no ID token: remove {key}")

    def _tls_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.tls is None:
            return
        if not self.public_url.lower().startswith("https://"):
            yield ("public_url",), ("tls is on, so users reach authproxy over https: write public_url with https://, "
                                    "or remove tls")
        redirect = self.tls.redirect_http_listen
        if redirect is not None and _split_listen(redirect)[1] == self.listen_port:
            yield ("tls", "redirect_http_listen"), (f"{redirect!r} has the port of listen, which serves https; "
                                                    "give the plain-HTTP redirect another port, e.g. 0.0.0.0:80")

    def _host_problems(self) -> Iterator[tuple[Loc, str]]:
        """Several hosts share one sign-in only through a cookie on a parent domain of them all."""
        public_host = (urlsplit(self.public_url).hostname or "").lower()
        domain = self.cookie.domain
        if self.allowed_hosts and domain is None:
            yield ("allowed_hosts",), ("the session cookie is sent to public_url's host only, so users signed in "
                                       "there stay signed out on the other hosts; set cookie.domain to a parent "
                                       f"domain of them all, e.g. {public_host.partition('.')[2] or 'example.com'}")
            return
        for i, entry in enumerate(self.allowed_hosts):
            name = entry.split(":", 1)[0].lstrip(".")
            if domain is not None and not domain_covers(domain, name):
                yield ("allowed_hosts", i), (f"{name!r} is not under cookie.domain {domain!r}, so it never receives "
                                             "the session cookie; remove it or widen cookie.domain")
        if domain is not None and not domain_covers(domain, public_host):
            yield ("cookie", "domain"), (f"public_url's host {public_host!r} is not under {domain!r}: browsers refuse "
                                         "a cookie for another domain; set cookie.domain to a parent of it")
        for i, upstream in enumerate(self.upstreams):
            if upstream.host is not None and upstream.host != public_host and not any(
                    domain_covers(e.split(":", 1)[0], upstream.host) if e.startswith(".")
                    else e.split(":", 1)[0] == upstream.host for e in self.allowed_hosts):
                yield ("upstreams", i, "host"), (f"{upstream.host!r} is neither public_url's host nor in "
                                                 "allowed_hosts: a sign-in could not return there; add it")

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            _split_listen(value)
        return value

    @property
    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)

    @field_validator("upstreams")
    @classmethod
    def _distinct_paths(cls, upstreams: list[UpstreamConfig]) -> list[UpstreamConfig]:
        if not upstreams:
            raise ValueError('is empty; add at least one, e.g. - path: "/" with url: "http://127.0.0.1:8080"')
        first: dict[str, int] = {}      # by host and path
        problems: list[tuple[Loc, str]] = []
        for index, upstream in enumerate(upstreams):
            key = f"{upstream.host or ''}{upstream.path}"
            if key in first:
                on = f" on host {upstream.host!r}" if upstream.host else ""
                problems.append(((index, "path"), f"{upstream.path!r}{on} is already the path of "
                                 f"upstreams[{first[key]}]; each path may appear once per host: change or remove one"))
            first.setdefault(key, index)
        if problems:
            raise _CrossFieldProblems(problems)
        return upstreams

    @property
    def listen_host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen)[1]

    @property
    def redirect_uri(self) -> str:
        return self.public_url + CALLBACK_PATH

    @property
    def public_origin(self) -> str:
        """``scheme://host[:port]``, lowercased and without a default port (RFC 6454 §6.2)."""
        parts = urlsplit(self.public_url)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        default = {"http": 80, "https": 443}[scheme]
        return f"{scheme}://{host}" if parts.port in (None, default) else f"{scheme}://{host}:{parts.port}"
