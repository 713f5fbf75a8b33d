"""``Config``, the root model: its sections, the top-level keys and the small ``limits`` and ``logging``
sections; the larger sections each have a module (``provider``, ``sessions``, ``access``).

The schema ``authproxy config-schema`` prints is ``Config.model_json_schema()``: the models' names,
docstrings and fields, wherever their module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, field_validator

from .access import AuthorizationConfig, CorsConfig, SkipAuthRule, UpstreamConfig
from .base import _CrossFieldProblems, _Model
from .provider import ProviderConfig
from .sessions import CookieConfig, SessionConfig
from .values import (CALLBACK_PATH, Duration, Loc, PositiveDuration, _absolute_path, _cidr, _lower, _origin,
                     _public_url, _split_listen, _templates_dir, _workers)


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
        if self.provider.response_mode == "form_post" and not self.cookie.secure:
            yield ("provider", "response_mode"), ("form_post needs cookie.secure: true: the login cookie must be "
                                                  "SameSite=None to come with the provider's cross-site POST, and "
                                                  "browsers drop such cookies unless they are Secure")
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
