"""The configuration's typed, frozen models and the rules that span their fields."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, field_validator,
                      model_validator)

from .. import presets
from .values import (CALLBACK_PATH, DEFAULT_ID_TOKEN_ALGORITHMS, Duration, Loc, PositiveDuration, Secret,
                     _absolute_path, _algorithm, _at_least_one, _authorize_params, _cidr, _cookie_key, _decode_key,
                     _templates_dir, _existing_file, _http_url, _lower, _non_empty, _one_or_many, _origin, _public_url,
                     _redis_url, _regex, _scope, _split_listen, _token_type, _upper_all, _upstream_url, _workers,
                     _COOKIE_NAME, _DOMAIN)

class _CrossFieldProblems(ValueError):
    """Problems of rules that span fields, each with a path relative to the model that found them."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        return iter(())

    @model_validator(mode="after")
    def _check_across_fields(self) -> _Model:
        problems = list(self._cross_field_problems())
        if problems:
            raise _CrossFieldProblems(problems)
        return self


Url = Annotated[str, _http_url("https://idp.example.com")]
CookieKey = Annotated[Secret, AfterValidator(_cookie_key)]


ClaimPath = Annotated[str, AfterValidator(_non_empty)]


class ClaimsConfig(_Model):
    """Where the identity is found in the ID token or userinfo claims: dotted paths such as
    ``realm_access.roles``. ``user`` applies to plain OAuth 2.0 only: with OpenID Connect the user is
    always the ID token's ``sub`` (OIDC Core §2), so the refresh check can compare it."""

    user: ClaimPath = "sub"
    email: ClaimPath = "email"
    name: ClaimPath = "name"
    preferred_username: ClaimPath = "preferred_username"
    groups: ClaimPath = "groups"


class ProviderConfig(_Model):
    """The identity provider: OpenID Connect with discovery, plain OAuth 2.0 with explicit endpoints,
    or a preset (``presets.py``) that fills either in."""

    type: Literal["oidc", "oauth2", "github", "google", "microsoft", "gitlab", "keycloak"] = "oidc"
    tenant: str | None = None
    base_url: Url | None = None
    claims: ClaimsConfig = ClaimsConfig()
    issuer: Url | None = None
    authorization_endpoint: Url | None = None
    token_endpoint: Url | None = None
    userinfo_endpoint: Url | None = None
    jwks_uri: Url | None = None
    end_session_endpoint: Url | None = None
    client_id: Annotated[str, AfterValidator(_non_empty)]
    client_secret: Secret
    scopes: list[Annotated[str, AfterValidator(_scope)]] = ["openid", "email", "profile"]
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    id_token_algorithms: Annotated[list[Annotated[str, AfterValidator(_algorithm)]],
                                   AfterValidator(_at_least_one)] = list(DEFAULT_ID_TOKEN_ALGORITHMS)
    use_userinfo: bool = False
    clock_skew: Duration = 60.0
    timeout: PositiveDuration = 10.0
    ca_file: Annotated[str, AfterValidator(_existing_file)] | None = None
    extra_authorize_params: Annotated[dict[str, str], AfterValidator(_authorize_params)] = {}
    accept_bearer_tokens: bool = False
    bearer_audiences: list[str] = []
    # RFC 9068 §2.1: JWT access tokens are typed "at+jwt"; providers that do not (Azure AD, Keycloak,
    # Okta) need their typ listed here. An ID or logout token is refused whatever this says.
    bearer_token_types: Annotated[list[Annotated[str, AfterValidator(_token_type)]],
                                  AfterValidator(_at_least_one)] = ["at+jwt"]

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """Fill in a preset's defaults; plain OAuth 2.0 has no ID token, so claims come from userinfo."""
        if not isinstance(data, dict):
            return data
        data = presets.expand(data)
        if presets.protocol_of(str(data.get("type", "oidc"))) == "oauth2" and "use_userinfo" not in data:
            data["use_userinfo"] = True
        return data

    @property
    def protocol(self) -> Literal["oidc", "oauth2"]:
        return "oauth2" if presets.protocol_of(self.type) == "oauth2" else "oidc"

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        preset_problems = list(presets.problems(self.type, self.tenant, self.issuer))
        for key, message in preset_problems:
            yield (key,), message
        if self.protocol == "oidc" and not preset_problems:
            yield from self._oidc_problems()
        else:
            for name in ("authorization_endpoint", "token_endpoint"):
                if getattr(self, name) is None:
                    yield (name,), f"required for type oauth2 (there is no discovery); add the provider's {name} URL"
            if not self.use_userinfo:
                yield ("use_userinfo",), ("type oauth2 has no ID token, so claims always come from userinfo; "
                                          "remove use_userinfo or set it to true")
        if self.accept_bearer_tokens and self.protocol == "oauth2":
            yield ("accept_bearer_tokens",), ("bearer JWTs are verified against an OpenID provider's issuer and keys; "
                                              "type oauth2 has neither: remove accept_bearer_tokens")
        untyped = [t for t in self.bearer_token_types if t.lower().removeprefix("application/") != "at+jwt"]
        if self.accept_bearer_tokens and untyped and not self.bearer_audiences:
            yield ("bearer_audiences",), (f"with bearer_token_types {untyped}, an ID token of this client (its aud is "
                                          "client_id, the default here) is told from an access token only by its "
                                          "nonce; list your API's audience in bearer_audiences (the client id "
                                          "too only if your access tokens carry it)")
        if self.use_userinfo and not self.needs_discovery and self.userinfo_endpoint is None:
            yield ("userinfo_endpoint",), ("claims come from userinfo but there is no issuer to discover it "
                                           'from; add userinfo_endpoint, e.g. "https://idp.example.com/userinfo"')

    def _oidc_problems(self) -> Iterator[tuple[Loc, str]]:
        """OIDC Core §3.1.3.7: every ID token's ``iss`` is checked against the issuer, so type oidc always
        needs one; the endpoints come from discovery unless all of them are given (then it is skipped)."""
        if self.issuer is None:
            yield ("issuer",), ('required for type oidc: ID tokens are checked against it; add the provider\'s '
                                'issuer URL, e.g. issuer: "https://idp.example.com" (with authorization_endpoint, '
                                "token_endpoint and jwks_uri all given, discovery is skipped)")
        if "openid" not in self.scopes:
            yield ("scopes",), ('type oidc needs the "openid" scope; add openid to scopes '
                                "(or use type: oauth2 for a provider without OpenID Connect)")

    @property
    def needs_discovery(self) -> bool:
        explicit = (self.authorization_endpoint, self.token_endpoint, self.jwks_uri)
        return self.protocol == "oidc" and self.issuer is not None and not all(explicit)


# The cookie name when secure, host-only and not configured (``CookieConfig._host_prefix_by_default``).
HOST_PREFIXED_NAME = "__Host-authproxy"


class CookieConfig(_Model):
    """The session cookie (RFC 6265): its attributes and the keys that seal it."""

    # The default name: "__Host-authproxy" when it can be (see ``_host_prefix_by_default``), else this.
    name: str = "_authproxy"
    secret: Annotated[tuple[CookieKey, ...], BeforeValidator(_one_or_many), AfterValidator(_at_least_one),
                      WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                                      "minItems": 1}],
                                      "description": "one key, or a list whose first key seals (rotation)"})]
    secure: bool = True
    samesite: Annotated[Literal["lax", "strict", "none"], BeforeValidator(_lower)] = "lax"
    domain: str | None = None
    path: Annotated[str, AfterValidator(_absolute_path)] = "/"
    expire: PositiveDuration = 168 * 3600.0
    refresh_before: Duration = 60.0

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The 32-byte keys: the first seals, all open (rotation)."""
        return tuple(_decode_key(secret.get()) or b"" for secret in self.secret)

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        if not _COOKIE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid cookie name; use letters, digits and !#$%&'*+-.^_`|~ only")
        return value

    @field_validator("domain")
    @classmethod
    def _host_name(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.fullmatch(value):
            raise ValueError(f"must be a host name such as example.com (no scheme, port or path); got {value!r}")
        return value

    @model_validator(mode="after")
    def _host_prefix_by_default(self) -> CookieConfig:
        """Without a configured name, a secure host-only cookie is named ``__Host-authproxy``.

        Browsers accept a ``__Host-`` cookie only with Secure, Path=/ and no Domain (RFC 6265bis
        §4.1.3.2), so a sibling subdomain cannot set one for this host ("cookie tossing"): it cannot
        plant its own session, chunk or login-state cookie under our names (all derive from this
        one). A name set in the file or the environment is kept as it is."""
        if "name" not in self.model_fields_set and self.secure and self.domain is None and self.path == "/":
            object.__setattr__(self, "name", HOST_PREFIXED_NAME)
        return self

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.samesite == "none" and not self.secure:
            yield ("samesite",), ('"none" requires secure: true, or browsers reject the cookie; '
                                  "set cookie.secure: true or use samesite: lax")
        name = self.name.lower()  # browsers match the prefixes case-insensitively
        if name.startswith("__host-") and not (self.secure and self.path == "/" and self.domain is None):
            yield ("name",), ('a "__Host-" cookie must be secure, have path "/" and no domain, or browsers drop it '
                              "(RFC 6265bis §4.1.3.2); set secure: true and path: \"/\", remove domain, "
                              "or choose another name")
        elif name.startswith("__secure-") and not self.secure:
            yield ("name",), ('a "__Secure-" cookie must be secure, or browsers drop it (RFC 6265bis §4.1.3.1); '
                              "set secure: true or choose another name")


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


class RedisConfig(_Model):
    """Where the Redis session store connects: one server, a Sentinel-managed master, or a Cluster."""

    url: Annotated[str, AfterValidator(_redis_url)] = "redis://127.0.0.1:6379/0"
    password: Secret | None = None
    sentinel_master: str | None = None
    sentinel_urls: list[Annotated[str, AfterValidator(_redis_url)]] = []
    cluster: bool = False
    key_prefix: str = "authproxy:"
    # A CA bundle (PEM) that signed the servers' certificates, for rediss:// URLs: added to the system CAs.
    ca_file: Annotated[str, AfterValidator(_existing_file)] | None = None
    connect_timeout: PositiveDuration = 2.0
    timeout: PositiveDuration = 2.0
    lock_timeout: PositiveDuration = 10.0

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.sentinel_master and not self.sentinel_urls:
            yield ("sentinel_urls",), ("sentinel_master needs the sentinels' addresses; add sentinel_urls, e.g. "
                                       '["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]')
        if self.sentinel_master and self.cluster:
            yield ("cluster",), "Sentinel and Cluster exclude each other; set one of them"
        if self.ca_file and not any(url.startswith("rediss://") for url in [self.url, *self.sentinel_urls]):
            yield ("ca_file",), ("ca_file is only used for TLS; write the URL as rediss://... or remove ca_file")


class SessionConfig(_Model):
    """Where sessions live: in the cookie (default, no server state) or in Redis (the cookie is a ticket)."""

    store: Literal["cookie", "redis"] = "cookie"
    redis: RedisConfig | None = None

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.store == "redis" and self.redis is None:
            yield ("redis",), 'store redis needs its connection; add redis: {url: "redis://127.0.0.1:6379/0"}'


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


def _count(low: int, high: int, example: int) -> AfterValidator:
    """An integer between ``low`` and ``high``, with a message that says so and gives an example."""
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}; got {value}, e.g. write {example}")
        return value
    return AfterValidator(check)


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


class LoggingConfig(_Model):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = "text"


class Config(_Model):
    """The whole configuration; build it with :func:`load_config` or :func:`parse_config`."""

    listen: str = "0.0.0.0:4180"
    public_url: Annotated[str, AfterValidator(_public_url)]
    provider: ProviderConfig
    cookie: CookieConfig
    upstreams: list[UpstreamConfig]
    session: SessionConfig = SessionConfig()
    authorization: AuthorizationConfig = AuthorizationConfig()
    api_paths: list[Annotated[str, AfterValidator(_absolute_path)]] = []
    skip_auth: list[SkipAuthRule] = []
    cors: CorsConfig = CorsConfig()
    websocket_origins: list[Annotated[str, AfterValidator(_origin)]] = []
    trusted_proxies: list[Annotated[str, AfterValidator(_cidr)]] = []
    templates_dir: Annotated[str, AfterValidator(_templates_dir)] | None = None
    logging: LoggingConfig = LoggingConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown_timeout: Duration = 30.0
    workers: Annotated[int | Literal["auto"], AfterValidator(_workers)] = 1
    metrics_listen: str | None = None
    metrics_on_listen: bool = False

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.metrics_on_listen and self.metrics_listen is not None:
            yield ("metrics_on_listen",), ("metrics_listen already serves /metrics on its own port; set "
                                           "metrics_on_listen: false, or remove metrics_listen to serve them on listen")

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
        first: dict[str, int] = {}
        problems: list[tuple[Loc, str]] = []
        for index, upstream in enumerate(upstreams):
            if upstream.path in first:
                problems.append(((index, "path"), f"{upstream.path!r} is already the path of "
                                 f"upstreams[{first[upstream.path]}]; each path may appear once: change or remove one"))
            first.setdefault(upstream.path, index)
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
