"""Value types and single-field rules of the configuration: secrets, durations, URLs, paths, keys."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import math
import os
import re
import stat
from typing import Annotated, Any
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BeforeValidator, GetCoreSchemaHandler, WithJsonSchema
from pydantic_core import core_schema


Loc = tuple[str | int, ...]

#: Where the provider sends the browser back to, below ``public_url`` (RFC 6749 §3.1.2).
CALLBACK_PATH = "/oauth2/callback"
#: Asymmetric JWS algorithms (RFC 7518 §3.1, RFC 8037); HS* would make the client secret a signing key.
DEFAULT_ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                               "ES256", "ES384", "ES512", "EdDSA")
KNOWN_ID_TOKEN_ALGORITHMS = frozenset(DEFAULT_ID_TOKEN_ALGORITHMS) | {"ES256K"}
#: Authorization-request parameters authproxy sets itself (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1).
RESERVED_AUTHORIZE_PARAMS = frozenset({"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                                       "code_challenge", "code_challenge_method", "response_mode", "request_uri"})
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


# What ``config-schema`` says a duration is: what parse_duration accepts, not the float it becomes.
_DURATION_JSON_SCHEMA = WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": r"^(\d+(\.\d*)?|\.\d+)$|^((\d+(\.\d*)?|\.\d+)(ms|s|m|h|d))+$",
               "examples": ["30s", "1h30m", "500ms", "168h"]},
              {"type": "number", "minimum": 0}],
    "description": 'a duration: a number with a unit (ms, s, m, h, d), e.g. "30s" or "1h30m", or seconds',
})
Duration = Annotated[float, BeforeValidator(parse_duration), _DURATION_JSON_SCHEMA]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive), _DURATION_JSON_SCHEMA]


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
    if parts.path.strip("/"):
        raise ValueError(f"must be an origin without a path (authproxy serves /oauth2/* at the root), e.g. "
                         f"{parts.scheme}://{parts.netloc}; got {value!r}")
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


#: The error page template's name in ``templates_dir`` (``pages.py``).
TEMPLATE_NAME = "error.html"


def template_problem(templates_dir: str) -> str | None:
    """Why ``templates_dir/error.html`` may not be used, or None (also when there is none).

    It must be a regular file inside the directory. A symbolic link is followed only while it stays
    inside (a Kubernetes ConfigMap volume is made of such links: ``error.html -> ..data/error.html``);
    one that leads out is refused — pointed at ``/proc/self/environ``, it put the process's secrets
    into every error page (``pages.py``)."""
    path = os.path.join(templates_dir, TEMPLATE_NAME)
    if not os.path.lexists(path):
        return None
    real = os.path.realpath(path)
    if os.path.commonpath([real, os.path.realpath(templates_dir)]) != os.path.realpath(templates_dir):
        return f"{path} is a symbolic link to {real}, outside the directory; copy the template into it instead"
    try:
        info = os.stat(real)
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file; put your error page there as a file"
    return None


def _templates_dir(value: str) -> str:
    """An existing directory whose ``error.html``, if any, is a regular file in it."""
    problem = template_problem(_existing_dir(value))
    if problem is not None:
        raise ValueError(problem)
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


# A DNS name as Google writes a Workspace domain in ``hd``: lower-case labels, at least two of them.
_HOSTED_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _domain(value: str) -> str:
    """A domain name, lower-cased; not a URL, an address or a wildcard (``hd`` is compared as it is)."""
    lowered = value.strip().lower()
    if not _HOSTED_DOMAIN.fullmatch(lowered):
        raise ValueError(f"{value!r} is not a domain name; write the domain alone, e.g. example.com")
    return lowered


def _algorithm(value: str) -> str:
    if value.lower() == "none":
        raise ValueError("'none' would accept unsigned ID tokens; remove it")
    if value.upper().startswith("HS"):
        raise ValueError(f"{value!r} signs with the client secret (HMAC), which authproxy does not accept; "
                         "remove it and keep public-key algorithms such as RS256 or ES256")
    if value not in KNOWN_ID_TOKEN_ALGORITHMS:
        raise ValueError(f"unknown algorithm {value!r}; use some of {', '.join(sorted(KNOWN_ID_TOKEN_ALGORITHMS))}")
    return value


# A ``typ`` header value (RFC 7515 §4.1.9): a media type, "application/" optional; "" = no typ header.
_TOKEN_TYPE = re.compile(r"(?:application/)?[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*", re.IGNORECASE)
# ``typ`` values of tokens that are never access tokens (Back-Channel Logout 1.0 §2.4, RFC 8417 §2.3).
_NOT_ACCESS_TOKEN_TYPES = frozenset({"logout+jwt", "secevent+jwt"})


def _token_type(value: str) -> str:
    if value == "":
        return value
    if not _TOKEN_TYPE.fullmatch(value):
        raise ValueError(f"{value!r} is not a typ header value; use a media type such as \"at+jwt\" or \"JWT\", "
                         "or \"\" for tokens without typ")
    if value.lower().removeprefix("application/") in _NOT_ACCESS_TOKEN_TYPES:
        raise ValueError(f"{value!r} types a logout or event token, which is never an access token; remove it")
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

def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return next((name for cls, name in kinds.items() if isinstance(value, cls)), type(value).__name__)
