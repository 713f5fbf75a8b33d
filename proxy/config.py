"""The configuration: one typed, frozen model, read and validated once at start-up.

A proxy that guards a login should refuse to start on a bad configuration rather than fail on
the first request, and the operator should be able to fix everything in one pass. So
:func:`load_config` reads the YAML, substitutes ``${VAR}`` from the environment, validates with
pydantic and turns *every* problem (wrong types, misspelt or missing keys, rules across fields)
into a :class:`~proxy.errors.Problem` with its YAML path and a sentence on how to fix it, all
raised together in one :class:`~proxy.errors.ConfigError`, in the order they appear in the file.
A rule across fields of one section runs once that section's fields are each valid, so it never
complains about a value that is wrong in itself. Nothing is built here: the app builds its
clients and stores from the frozen result, so validating has no side effects.

This is the only module that reads YAML or the environment. Secrets live in :class:`Secret`,
whose repr is redacted, and no error message quotes a secret's value.

In every string value, before validation: ``${NAME}`` is replaced from the environment,
``${NAME:-default}`` falls back to the default when NAME is unset or empty, and ``$${`` is a
literal ``${``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hmac
import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, GetCoreSchemaHandler,
                      ValidationError, field_validator, model_validator)
from pydantic_core import ErrorDetails, core_schema

from . import presets
from .errors import ConfigError, Problem

Loc = tuple[str | int, ...]

#: Where the provider sends the browser back to, below ``public_url`` (RFC 6749 §3.1.2).
CALLBACK_PATH = "/oauth2/callback"
#: Asymmetric JWS algorithms (RFC 7518 §3.1, RFC 8037); HS* would make the client secret a signing key.
DEFAULT_ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                               "ES256", "ES384", "ES512", "EdDSA")
KNOWN_ID_TOKEN_ALGORITHMS = frozenset(DEFAULT_ID_TOKEN_ALGORITHMS) | {"ES256K"}
#: Authorization-request parameters authproxy sets itself (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1).
RESERVED_AUTHORIZE_PARAMS = frozenset({"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                                       "code_challenge", "code_challenge_method"})
COOKIE_KEY_BYTES = 32
MAKE_KEY_HINT = ('make one with `authproxy secret` or `python -c "import secrets,base64;'
                 'print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"`')

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 §4.1.1: a token (RFC 2616 §2.2)
_DOMAIN = re.compile(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_REF = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Secret:
    """A string that never shows itself: ``repr`` and ``str`` are redacted, ``.get()`` is explicit."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        redacted = core_schema.plain_serializer_function_ser_schema(str, when_used="json")
        return core_schema.no_info_plain_validator_function(cls._validate, serialization=redacted,
                                                            json_schema_input_schema=core_schema.str_schema())

    @classmethod
    def _validate(cls, value: object) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            hint = "write the value after the colon" if value is None else "put the value in quotes"
            raise ValueError(f"expected a string, got {_kind(value)}; {hint}")
        if not value:
            raise ValueError('the value is empty; write it here or take it from the environment with "${NAME}"')
        return cls(value)


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"168h"``, ``"1h30m"``, ``"500ms"``, ``"60s"`` or a bare number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f'expected a duration such as "30s" or a number of seconds, got {_kind(value)}')
    seconds = _duration_text(value.strip()) if isinstance(value, str) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f'a duration must be zero or more seconds, got {value!r}; write e.g. "30s"')
    return seconds


def _duration_text(text: str) -> float:
    if _NUMBER.fullmatch(text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f'invalid duration {text!r}; write a number with a unit such as "30s", "1h30m" or '
                         '"500ms" (units: ms, s, m, h, d), or a bare number of seconds')
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError('must be longer than zero; write e.g. "30s"')
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]


def _split_url(value: str, example: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http or https URL with a host, e.g. {example}; got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user name or password; remove the part before '@'")
    return parts


def _http_url(example: str) -> AfterValidator:
    def check(value: str) -> str:
        _split_url(value, example)
        return value
    return AfterValidator(check)


def _public_url(value: str) -> str:
    parts = _split_url(value, "https://app.example.com")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must not have a query or fragment; remove everything from '?' or '#' on")
    return value.rstrip("/")


def _split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    valid_host = _is_ipv6(host) if bracketed else bool(_DOMAIN.fullmatch(host))
    if not valid_host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'must be "host:port", e.g. "0.0.0.0:4180" or "[::]:4180" for IPv6; got {value!r}')
    return host, int(port)


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'must start with "/", e.g. "/" or "/api"; got {value!r}')
    return value


def _upstream_url(value: str) -> str:
    """http(s)://host[:port][/base], or unix:/absolute/path.sock for an app listening on a socket."""
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise ValueError(f"a unix socket URL is unix:/absolute/path.sock; got {value!r}")
        return value
    _split_url(value, "http://127.0.0.1:8080 or unix:/run/app.sock")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}); e.g. \"^/public/\"") from None
    return value


def _origin(value: str) -> str:
    parts = _split_url(value, "https://app.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an origin is scheme://host[:port] with nothing after it; got {value!r}")
    return value.rstrip("/").lower()


def _existing_dir(value: str) -> str:
    if not os.path.isdir(value):
        raise ValueError(f"no such directory {value!r}; create it or remove the key")
    return value


def _upper_all(values: object) -> object:
    return [v.upper() if isinstance(v, str) else v for v in values] if isinstance(values, list) else values


def _redis_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError(f"must be a redis://, rediss:// (TLS) or unix:// URL, e.g. redis://127.0.0.1:6379/0; "
                         f"got {value!r}")
    if parts.password:
        raise ValueError("must not contain a password; put it in session.redis.password, from the environment")
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"must be an IP address or network, e.g. 10.0.0.0/8 or 127.0.0.1; got {value!r}") from None
    return value


def _workers(value: int | str) -> int | str:
    if isinstance(value, int) and not 1 <= value <= 256:
        raise ValueError(f"must be between 1 and 256, or \"auto\" for one per CPU; got {value}")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; write the value the identity provider gave you")
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _one_or_many(value: object) -> object:
    return value if isinstance(value, (list, tuple)) else [value]


def _existing_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError(f"no such file {value!r}; give the path of a PEM CA bundle, or remove ca_file")
    return value


def _scope(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"{value!r} is not one scope; write each scope as its own list item")
    return value


def _algorithm(value: str) -> str:
    if value.lower() == "none":
        raise ValueError("'none' would accept unsigned ID tokens; remove it")
    if value.upper().startswith("HS"):
        raise ValueError(f"{value!r} signs with the client secret (HMAC), which authproxy does not accept; "
                         "remove it and keep public-key algorithms such as RS256 or ES256")
    if value not in KNOWN_ID_TOKEN_ALGORITHMS:
        raise ValueError(f"unknown algorithm {value!r}; use some of {', '.join(sorted(KNOWN_ID_TOKEN_ALGORITHMS))}")
    return value


def _at_least_one(values: Any) -> Any:
    if not values:
        raise ValueError("is empty; list at least one")
    return values


def _authorize_params(params: dict[str, str]) -> dict[str, str]:
    clash = sorted(name for name in params if name.lower() in RESERVED_AUTHORIZE_PARAMS)
    if clash:
        raise ValueError(f"may not set {', '.join(clash)}: authproxy sets these itself; remove them")
    return params


def _decode_key(text: str) -> bytes | None:
    """Standard or URL-safe base64 (RFC 4648 §4, §5), with or without padding."""
    text = text.strip().rstrip("=")
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _cookie_key(secret: Secret) -> Secret:
    key = _decode_key(secret.get())
    if key is None:
        raise ValueError(f"the value is not base64; {MAKE_KEY_HINT}")
    if len(key) != COOKIE_KEY_BYTES:
        raise ValueError(f"the value decodes to {len(key)} bytes but must be exactly {COOKIE_KEY_BYTES}; "
                         + MAKE_KEY_HINT)
    return secret


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
        discovers = self.protocol == "oidc" and self.issuer is not None
        if self.use_userinfo and not discovers and self.userinfo_endpoint is None:
            yield ("userinfo_endpoint",), ("claims come from userinfo but there is no issuer to discover it "
                                           'from; add userinfo_endpoint, e.g. "https://idp.example.com/userinfo"')

    def _oidc_problems(self) -> Iterator[tuple[Loc, str]]:
        """OIDC Core §3.1: an issuer to discover from (Discovery §4), or every endpoint given explicitly."""
        explicit = ("authorization_endpoint", "token_endpoint", "jwks_uri")
        missing = [name for name in explicit if getattr(self, name) is None]
        if self.issuer is None and missing:
            yield ("issuer",), ('required for type oidc; add the provider\'s issuer URL, e.g. issuer: '
                                '"https://idp.example.com", or give authorization_endpoint, token_endpoint and '
                                f"jwks_uri explicitly (missing: {', '.join(missing)})")
        if "openid" not in self.scopes:
            yield ("scopes",), ('type oidc needs the "openid" scope; add openid to scopes '
                                "(or use type: oauth2 for a provider without OpenID Connect)")


class CookieConfig(_Model):
    """The session cookie (RFC 6265): its attributes and the keys that seal it."""

    name: str = "_authproxy"
    secret: Annotated[tuple[CookieKey, ...], BeforeValidator(_one_or_many), AfterValidator(_at_least_one)]
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
    connect_timeout: PositiveDuration = 2.0
    timeout: PositiveDuration = 2.0
    lock_timeout: PositiveDuration = 10.0

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        if self.sentinel_master and not self.sentinel_urls:
            yield ("sentinel_urls",), ("sentinel_master needs the sentinels' addresses; add sentinel_urls, e.g. "
                                       '["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]')
        if self.sentinel_master and self.cluster:
            yield ("cluster",), "Sentinel and Cluster exclude each other; set one of them"


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
    templates_dir: Annotated[str, AfterValidator(_existing_dir)] | None = None
    logging: LoggingConfig = LoggingConfig()
    shutdown_timeout: Duration = 30.0
    workers: Annotated[int | Literal["auto"], AfterValidator(_workers)] = 1
    metrics_listen: str | None = None

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


ENV_PREFIX = "AUTHPROXY_"
# Environment variables with the prefix that are not configuration keys.
_ENV_NOT_KEYS = frozenset({"AUTHPROXY_CONFIG"})


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Configuration keys from ``AUTHPROXY_<KEY>__<SUBKEY>`` variables (``__`` nests, a number indexes a list).

    ``AUTHPROXY_PROVIDER__ISSUER=https://idp`` sets ``provider.issuer``; ``AUTHPROXY_UPSTREAMS__0__URL``
    sets ``upstreams[0].url``; a value starting with ``[`` or ``{`` is read as YAML (``["a", "b"]``).
    This is how Kubernetes injects secrets; values here override the file's. Only variables whose first
    part names a top-level key count, so ``${AUTHPROXY_SOMETHING}`` can still be used for substitution.
    """
    data: dict[str, Any] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS:
            continue
        parts: list[Any] = [int(p) if p.isdigit() else p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if parts[0] not in Config.model_fields:
            continue
        value: Any = environ[name]
        if value.lstrip().startswith(("[", "{")):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass                      # left as text: validation then says what is wrong
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def _merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``: mappings merge key by key; integer keys address list items."""
    if isinstance(override, dict) and isinstance(base, list) and all(isinstance(k, int) for k in override):
        merged = list(base)
        for index, value in override.items():
            while len(merged) <= index:
                merged.append({})
            merged[index] = _merge(merged[index], value)
        return merged
    if isinstance(override, dict) and all(isinstance(k, int) for k in override) and override and base is None:
        return _merge([], override)
    if isinstance(override, dict) and isinstance(base, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at ``path`` (None: environment only), apply ``AUTHPROXY_*`` overrides,
    substitute ``${VAR}`` and validate; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    if path is None:
        return parse_config({}, source="(environment)", environ=env)
    source = os.fsdecode(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError(source, [Problem("(file)", "no such file; check the path, or start from "
                                                     "config.example.yaml")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem("(file)", f"cannot be read ({exc}); check that it is a readable "
                                                     "UTF-8 text file")]) from None
    return parse_config(_parse_yaml(text, source), source=source, environ=env)


def parse_config(data: object, *, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Substitute ``${VAR}`` in already-parsed YAML and validate it; raise ConfigError listing every problem."""
    overrides = env_overrides(os.environ if environ is None else environ)
    if overrides and (isinstance(data, dict) or data is None):
        data = _merge(data or {}, overrides)
    if not isinstance(data, dict) or not data:
        what = "empty" if not data else f"{_kind(data)}, not a mapping"
        raise ConfigError(source, [Problem("(top level)", f"the configuration is {what}; write keys such as "
                                                          "public_url, provider, cookie and upstreams "
                                                          "(see config.example.yaml)")])
    found: list[tuple[Loc, str]] = []
    expanded = _substitute(data, (), os.environ if environ is None else environ, found)
    unset = [loc for loc, _ in found]
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        located = [(_as_written(expanded, loc), message) for loc, message in _locate(exc)]
        found += [(loc, message) for loc, message in located if not any(loc[:len(u)] == u for u in unset)]
    else:
        if not found:
            return config
    found.sort(key=lambda item: _document_order(data, item[0]))
    raise ConfigError(source, [Problem(_path(loc), message) for loc, message in found])


def _as_written(data: object, loc: Loc) -> Loc:
    """A list the file gave as one scalar (``secret: KEY``) is reported at the scalar's path, without ``[0]``."""
    for index, part in enumerate(loc):
        if isinstance(part, int) and not isinstance(data, (list, dict)):
            return loc[:index] + loc[index + 1:]
        try:
            data = data[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            break
    return loc


def _document_order(data: object, loc: Loc) -> tuple[int, ...]:
    """Where ``loc`` sits in the file, so problems read top to bottom; missing keys sort after their siblings."""
    order: list[int] = []
    for part in loc:
        keys = list(data) if isinstance(data, dict) else range(len(data)) if isinstance(data, list) else []
        if part not in keys:
            order.append(len(keys))
            break
        order.append(keys.index(part))
        data = data[part]  # type: ignore[index]
    return tuple(order)


class _DuplicateKey(yaml.constructor.ConstructorError):
    hint = "keep only one: otherwise the later one would silently win"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        hint = getattr(exc, "hint", "fix the syntax there (indentation, colons, quotes)")
        raise ConfigError(source, [Problem(where, f"invalid YAML: {exc.problem}; {hint}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem("(yaml)", f"invalid YAML: {exc}")]) from None


def _substitute(value: object, loc: Loc, environ: Mapping[str, str], found: list[tuple[Loc, str]]) -> object:
    """Replace ``${NAME}`` in every string value (not keys); record unset variables and non-string keys."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda match: _env_value(match, loc, environ, found), value)
    if isinstance(value, list):
        return [_substitute(item, loc + (index,), environ, found) for index, item in enumerate(value)]
    if isinstance(value, dict):
        for key in [key for key in value if not isinstance(key, str)]:
            found.append((loc + (yaml.safe_dump(key).splitlines()[0],), "this key is not a string (YAML reads "
                          'yes/no/on/off as true/false and bare numbers as numbers); quote it, e.g. "on":'))
        return {key: _substitute(item, loc + (key,), environ, found) for key, item in value.items()
                if isinstance(key, str)}
    return value


def _env_value(match: re.Match[str], loc: Loc, environ: Mapping[str, str], found: list[tuple[Loc, str]]) -> str:
    name, default = match["name"], match["default"]
    if match[0] == "$${":
        return "${"
    if name is None:
        found.append((loc, 'has a "${" that is not ${NAME} or ${NAME:-default}; fix it, or write $${ for a '
                           'literal "${"'))
        return match[0]
    value = environ.get(name)
    if default is not None:
        return value or default
    if value is None:
        found.append((loc, f"environment variable {name} is not set; export it or write the value in the file"))
        return ""
    return value


def _locate(error: ValidationError) -> Iterator[tuple[Loc, str]]:
    for detail in error.errors():
        loc = tuple(detail["loc"])
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, _CrossFieldProblems):
            yield from ((loc + sub, message) for sub, message in cause.problems)
        else:
            yield loc, _message(detail, loc)


_EXPECTED = {"string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
             "float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
             "int_parsing": "a whole number", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping of keys to values", "model_type": "a mapping of keys to values",
             "model_attributes_type": "a mapping of keys to values"}

_EXAMPLES = {
    "public_url": 'public_url: "https://app.example.com"',
    "provider": ('provider: {issuer: "https://idp.example.com", client_id: "authproxy", '
                 'client_secret: "${CLIENT_SECRET}"}'),
    "provider.client_id": 'client_id: "authproxy" (the client ID the identity provider gave this app)',
    "provider.client_secret": 'client_secret: "${CLIENT_SECRET}"',
    "cookie": 'cookie: {secret: "${COOKIE_SECRET}"}',
    "cookie.secret": f'secret: "${{COOKIE_SECRET}}"; {MAKE_KEY_HINT}',
    "upstreams": 'upstreams: [{path: "/", url: "http://127.0.0.1:8080"}]',
    "upstreams.path": 'path: "/"',
    "upstreams.url": 'url: "http://127.0.0.1:8080"',
}


def _message(detail: ErrorDetails, loc: Loc) -> str:
    """What is wrong and how to fix it, in words; never a secret's value."""
    kind, ctx, value = detail["type"], detail.get("ctx", {}), detail.get("input")
    secret, _ = _resolve(loc)
    given = _kind(value) if secret else _given(value)
    if kind == "missing":
        example = _EXAMPLES.get(".".join(part for part in loc if isinstance(part, str)))
        return f"required key is missing; add it, e.g. {example}" if example else \
            "required key is missing; add it (see config.example.yaml)"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {given}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {given}{_type_hint(kind, value)}"
    return f"{detail['msg']} (see config.example.yaml)"


def _type_hint(kind: str, value: object) -> str:
    if kind == "string_type" and isinstance(value, (int, float, bool)):
        return "; put it in quotes"
    if kind in ("list_type", "tuple_type"):
        return '; write one item per line, each starting with "- "'
    return ""


def _unknown_key(loc: Loc) -> str:
    _, model = _resolve(loc[:-1])
    names = list(model.model_fields) if model else []
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    if close:
        return f"unknown key {loc[-1]!r}; did you mean {close[0]!r}?"
    return f"unknown key {loc[-1]!r}; remove it (keys allowed here: {', '.join(names)})"


def _resolve(loc: Loc) -> tuple[bool, type[BaseModel] | None]:
    """Walk ``loc`` through the models: is it inside a Secret field, and which model is there."""
    model: type[BaseModel] | None = Config
    secret = False
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            continue
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        if field is None:
            return secret, None
        secret = secret or _find_class(field.annotation, Secret) is not None
        model = _find_class(field.annotation, BaseModel)
    return secret, model


def _find_class(annotation: Any, base: type[Any]) -> Any:
    if get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, base):
        return annotation
    for arg in get_args(annotation):
        if (found := _find_class(arg, base)) is not None:
            return found
    return None


def _path(loc: Loc) -> str:
    """``upstreams[0].url`` from ``("upstreams", 0, "url")``."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(top level)"


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return next((name for cls, name in kinds.items() if isinstance(value, cls)), type(value).__name__)


def _given(value: object) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return _kind(value)
