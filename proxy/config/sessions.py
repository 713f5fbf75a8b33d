"""The ``cookie`` and ``session`` sections: the session cookie, its keys, and where sessions are stored.

Together because they describe one thing, the user's session: its cookie's attributes and sealing
keys (``cookies.py``, ``crypto.py``) and, for the Redis store, the connection (``redis_store.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema, field_validator, model_validator

from .base import _Model
from .values import (_COOKIE_NAME, _DOMAIN, Duration, Loc, PositiveDuration, Secret, _absolute_path, _at_least_one,
                     _cookie_key, _decode_key, _existing_file, _lower, _one_or_many, _redis_url)


def _budget(value: int) -> int:
    if not 1024 <= value <= 1 << 20:
        raise ValueError(f"must be a number of bytes between 1024 and 1048576; got {value}, e.g. write 8192")
    return value


CookieKey = Annotated[Secret, AfterValidator(_cookie_key)]


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
    # Off by default: existing sessions keep their meaning on upgrade, and the right value is the app's.
    idle_timeout: PositiveDuration | None = None
    minimal: bool = False
    # Warn at sign-in when the session's Set-Cookie headers come near this many bytes (``CookieCodec.check_budget``).
    header_budget: Annotated[int, AfterValidator(_budget),
                             WithJsonSchema({"type": "integer", "minimum": 1024, "maximum": 1048576,
                                             "description": "bytes of Set-Cookie; sign-in warns from 3/4"})] = 8192

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
        if self.idle_timeout is not None and self.idle_timeout >= self.expire:
            yield ("idle_timeout",), (f"{self.idle_timeout:g}s is not shorter than cookie.expire "
                                      f"({self.expire:g}s), so it would never end a session first; make it "
                                      'shorter (e.g. "30m") or remove it')
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
