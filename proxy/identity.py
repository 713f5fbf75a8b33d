"""What one app is told about the user: its header template, its tokens and its signed assertion.

Apps expect identity in their own shape, so each upstream (or the global ``identity_headers``) names a
**preset** and/or explicit **headers**, each a header name and where its value comes from:

- an identity field, as authproxy checked it at sign-in (``user``, ``email`` — verified only —,
  ``preferred_username``, ``name``, ``groups``, joined with ","): the names policy rules use;
- any other string: a dotted claim path (``realm_access.roles``), read from the ID token and userinfo
  claims at sign-in and kept in the session (``model.Identity.claims``), lists joined with ",";
  ``{claim: path}`` is the same, spelt out;
- ``{value: text}``: a fixed value — a mapping, so no claim value can ever become one;
- ``{basic: field or path}``: ``Basic base64(value:)`` (RFC 7617), for apps that read HTTP basic auth;
- ``null``: a preset's header not sent.

The access token goes as ``Authorization: Bearer`` unless ``access_token_header`` names another header
(the token alone) or ``pass_access_token`` is off; when the template sets ``Authorization`` (the ``basic``
preset), the token goes in ``X-Forwarded-Access-Token``. The ID token only when ``id_token_header``
asks. A signed identity assertion (``assertion.py``) goes in the header ``identity_assertion`` names.

**Values are never trusted to be header-safe**: a value is sent only when every character is printable
(``str.isprintable``: no CR, LF, NUL or other control, no format character such as a bidi override or a
zero-width space, no lone surrogate, no separator but the space) and it has no leading or trailing
space, which a server would strip, making ``"admin "`` ``admin``. Otherwise the header is not sent at
all (encoding it would hand the app a value it may not decode). Printable text beyond ASCII goes as
UTF-8, whose bytes for such characters are all ≥ 0x80 — never a CR or LF. A ``basic`` value with a
":" is not sent either: the app would read the user as the part before it.

**Names** are checked at load (``header_name_problem``): a token (RFC 9110 §5.6.2) without "_" (nginx
drops such headers, CGI and WSGI servers read ``X_User`` as ``X-User``), and none the proxy sets itself,
no hop-by-hop field, ``Host``, ``Cookie``, ``Sec-*`` or ``Proxy-*``. Every name any upstream's template
uses is stripped from every client request (``headers.HeaderPolicy``), in any case and spelling.

Built once per upstream at start-up (``AppIdentity``); per request a loop over a few tuples.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from .headers import HOP_BY_HOP, METHOD_OVERRIDE, PATH_OVERRIDE

# The forwarding logger, as in headers.py and upstream/: an operator filters all forwarding by one name.
log = logging.getLogger("authproxy.upstream")

if TYPE_CHECKING:
    from .assertion import AssertionSigner
    from .config import Config, IdentityAssertionConfig, IdentityHeadersConfig, UpstreamConfig
    from .model import Identity, Session

# The identity fields a template may name (as policy rules do), and where each is on ``Identity``.
IDENTITY_FIELDS = {"user": "sub", "email": "email", "preferred_username": "preferred_username", "name": "name",
                   "groups": "groups"}
# Header name → source. A source is a field or claim path (str) or a tagged mapping; see the docstring.
PRESETS: dict[str, dict[str, str | dict[str, str]]] = {
    "x-forwarded": {"X-Forwarded-User": "user", "X-Forwarded-Email": "email",
                    "X-Forwarded-Preferred-Username": "preferred_username", "X-Forwarded-Groups": "groups"},
    # oauth2-proxy's --set-xauthrequest names.
    "x-auth-request": {"X-Auth-Request-User": "user", "X-Auth-Request-Email": "email",
                       "X-Auth-Request-Preferred-Username": "preferred_username",
                       "X-Auth-Request-Groups": "groups"},
    # Authelia's and Authentik's names, which many self-hosted apps read.
    "remote-user": {"Remote-User": "user", "Remote-Email": "email", "Remote-Name": "name", "Remote-Groups": "groups"},
    "basic": {"Authorization": {"basic": "user"}},
    "none": {},
}
# Where the access token goes when ``access_token_header`` does not say: Bearer, unless Authorization is taken.
TOKEN_HEADER_WITH_BASIC = "X-Forwarded-Access-Token"
# Names a template must not use: what the proxy sets or strips itself, and what would change how the
# request is framed, routed or read (RFC 9110 §7.6.1 hop-by-hop fields, Host, Cookie).
RESERVED = (HOP_BY_HOP | PATH_OVERRIDE | METHOD_OVERRIDE
            | {"host", "cookie", "content-length", "content-type", "content-encoding", "x-request-id",
               "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "forwarded",
               "x-real-ip", "set-cookie", "origin", "referer"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^`|~0-9A-Za-z]+")       # RFC 9110 §5.6.2 tchar, without "_"
_KINDS = ("claim", "value", "basic")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a header authproxy sets for the app, with the fix; None if it can."""
    if not isinstance(name, str) or not name:
        return "a header name must be a non-empty string, e.g. X-User"
    if "_" in name:
        return (f"{name!r} has '_': nginx drops such headers and CGI/WSGI servers read it as "
                f"{name.replace('_', '-')!r}; write {name.replace('_', '-')!r}")
    if not _TOKEN.fullmatch(name):
        return f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^`|~ only), e.g. X-User"
    lower = name.lower()
    if lower in RESERVED or lower.startswith(("sec-", "proxy-")):
        return f"{name!r} is set or stripped by authproxy itself (or frames the request); pick another name"
    return None


def source_problem(source: object) -> str | None:
    """Why a ``headers`` value is not a valid source, with the fix; None if it is."""
    if source is None:
        return None
    if isinstance(source, str):
        return _path_problem(source)
    if not isinstance(source, Mapping) or len(source) != 1 or next(iter(source)) not in _KINDS:
        return ('must be a claim path (e.g. "email" or "realm_access.roles"), {value: "fixed text"}, '
                '{claim: "path"}, {basic: "user"} or null')
    kind, text = next(iter(source.items()))
    if not isinstance(text, str):
        return f"{kind}: must be a string"
    if kind == "value":
        return None if text and safe(text) else f"{kind}: must be printable text without leading or trailing spaces"
    return _path_problem(text)


def _path_problem(path: str) -> str | None:
    if not path or any(not part for part in path.split(".")):
        return f'{path!r} is not a claim path; write a claim name or dotted path, e.g. "realm_access.roles"'
    return None


def safe(value: str) -> bool:
    """Whether a value can be sent in a header as it is (see the module docstring)."""
    return value.isprintable() and value[0] != " " and value[-1] != " "


def template_of(cfg: IdentityHeadersConfig) -> dict[str, str | dict[str, str]]:
    """The header → source mapping: the preset's, then the explicit headers (which replace or remove)."""
    merged: dict[str, tuple[str, str | dict[str, str] | None]] = {
        name.lower(): (name, source) for name, source in PRESETS[cfg.preset].items()}
    for name, source in cfg.headers.items():
        merged[name.lower()] = (name, source)
    return {name: source for name, source in merged.values() if source is not None}


def token_headers(cfg: IdentityHeadersConfig) -> tuple[str | None, str | None]:
    """Where the access token and the ID token go (None: not sent)."""
    access = None
    if cfg.pass_access_token:
        taken = "authorization" in (name.lower() for name in template_of(cfg))     # basic, or a claim
        access = cfg.access_token_header or (TOKEN_HEADER_WITH_BASIC if taken else "Authorization")
    return access, cfg.id_token_header


def names(cfg: IdentityHeadersConfig) -> list[str]:
    """Every header this template may set."""
    access, id_token = token_headers(cfg)
    return [*template_of(cfg), *(n for n in (access, id_token) if n)]


def template_problems(cfg: IdentityHeadersConfig) -> Iterator[tuple[tuple[str, ...], str]]:
    """The problems of a template as a whole: bad names, two values for one header."""
    for name in cfg.headers:
        problem = header_name_problem(name)
        if problem is not None:
            yield ("headers", name), problem
    seen: dict[str, str] = {}
    access, id_token = token_headers(cfg)
    named: list[tuple[str | None, str]] = [(n, "the template") for n in template_of(cfg)]
    for header, what in [*named, (access, "access_token_header"), (id_token, "id_token_header")]:
        if header is None:
            continue
        if header.lower() in seen:
            yield (what if what != "the template" else "headers",), (
                f"{header!r} would carry two values ({seen[header.lower()]} and {what}); send one of them "
                f"elsewhere (access_token_header / id_token_header) or set pass_access_token: false")
        seen[header.lower()] = what


def assertion_problems(config: Config) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """An upstream's assertion header must not be one its template already sets."""
    for index, upstream in enumerate(config.upstreams):
        if upstream.identity_assertion is None:
            continue
        header = upstream.identity_assertion.header
        used = names(upstream.identity_headers or config.identity_headers)
        if header.lower() in (name.lower() for name in used):
            yield ("upstreams", index, "identity_assertion", "header"), (
                f"{header!r} is already one of this upstream's identity headers; name the assertion's header "
                f"otherwise, e.g. X-Authproxy-Assertion")


def claim_paths(config: Config) -> tuple[str, ...]:
    """The claim paths (beyond the identity fields) any template names: kept in the session at sign-in."""
    paths: dict[str, None] = {}
    for cfg in (config.identity_headers, *(u.identity_headers for u in config.upstreams)):
        if cfg is None:
            continue
        for source in template_of(cfg).values():
            path: str | None = source if isinstance(source, str) else source.get("claim") or source.get("basic")
            if path and path not in IDENTITY_FIELDS:
                paths[path] = None
    return tuple(paths)


def all_names(config: Config) -> frozenset[str]:
    """Every header name any upstream's template or assertion uses, lower case: stripped from clients."""
    found = set(names(config.identity_headers))
    for upstream in config.upstreams:
        if upstream.identity_headers is not None:
            found.update(names(upstream.identity_headers))
        if upstream.identity_assertion is not None:
            found.add(upstream.identity_assertion.header)
    return frozenset(name.lower() for name in found)


# A compiled entry: header name, kind, key (attribute, claim path or fixed value), basic-encode.
_FIELD, _CLAIM, _FIXED = 0, 1, 2
# Rendered identity headers kept per Identity (a frozen value: equal identities give equal headers); the
# same users come back request after request, so a hit costs a hash instead of checking every value again.
RENDERED_MAX = 4096


class AppIdentity:
    """One upstream's template, compiled: ``items(session)`` is what the app is told about the user."""

    __slots__ = ("_access", "_assertion", "_bearer", "_entries", "_id_bearer", "_id_token", "_last", "_rendered",
                 "_signer")

    def __init__(self, cfg: IdentityHeadersConfig, assertion: IdentityAssertionConfig | None = None,
                 audience: str = "", signer: AssertionSigner | None = None) -> None:
        entries: list[tuple[str, int, str, bool]] = []
        for name, source in template_of(cfg).items():
            basic = isinstance(source, dict) and "basic" in source
            if isinstance(source, dict) and "value" in source:
                entries.append((name, _FIXED, source["value"], False))
                continue
            path = source if isinstance(source, str) else source.get("claim") or source["basic"]
            field = IDENTITY_FIELDS.get(path)
            entries.append((name, _CLAIM, path, basic) if field is None else (name, _FIELD, field, basic))
        self._entries = tuple(entries)
        self._rendered: dict[Identity, tuple[tuple[str, str], ...]] = {}
        # The last identity rendered, by object: a session the store keeps is the same object on each of its
        # requests, and hashing an Identity (every claim) was the dict look-up's cost.
        self._last: tuple[Identity | None, tuple[tuple[str, str], ...]] = (None, ())
        self._access, self._id_token = token_headers(cfg)
        self._bearer = self._access is not None and self._access.lower() == "authorization"
        self._id_bearer = self._id_token is not None and self._id_token.lower() == "authorization"
        self._signer = signer if assertion is not None else None
        self._assertion = (assertion.header, assertion.audience or audience, assertion.lifetime) if assertion else None
        if assertion is not None and signer is None:
            raise ValueError("an identity assertion needs the signer")

    def items(self, session: Session) -> list[tuple[str, str]]:
        ident = session.identity
        last = self._last
        rendered: tuple[tuple[str, str], ...] | None
        if last[0] is ident:                    # the same session object again (the store keeps it): no hash
            rendered = last[1]
        else:
            try:
                rendered = self._rendered.get(ident)
                hashable = True
            except TypeError:                   # an Identity built with a list somewhere: render, do not keep
                rendered, hashable = None, False
            if rendered is None:
                rendered = self._render(ident)
                if hashable:
                    if len(self._rendered) >= RENDERED_MAX:
                        self._rendered.clear()
                    self._rendered[ident] = rendered
            if hashable:                        # only a hashable (immutable) one: a list in it may change
                self._last = (ident, rendered)
        out = list(rendered)
        if self._access is not None:
            token = session.access_token
            out.append((self._access, f"Bearer {token}" if self._bearer else token))
        if self._id_token is not None and session.id_token:
            out.append((self._id_token, f"Bearer {session.id_token}" if self._id_bearer else session.id_token))
        if self._assertion is not None and self._signer is not None:
            header, audience, lifetime = self._assertion
            out.append((header, self._signer.assertion(session, audience, lifetime)))
        return out

    def _render(self, ident: Identity) -> tuple[tuple[str, str], ...]:
        """The identity's headers: every value checked, unsafe ones left out (module docstring)."""
        out: list[tuple[str, str]] = []
        for name, kind, key, basic in self._entries:
            if kind == _FIXED:
                out.append((name, key))
                continue
            value = _field(ident, key) if kind == _FIELD else ident.claim(key)
            if not value:
                continue
            if not safe(value):     # logged once per identity (rendered headers are kept); never the value
                log.info("identity header %s not sent for user %r: its value is not header-safe", name,
                         ident.sub if safe(ident.sub) else "?")
                continue
            if basic:
                if ":" in value:          # RFC 7617 §2: the user-id ends at the first ':'
                    continue
                value = "Basic " + base64.b64encode((value + ":").encode("utf-8")).decode("ascii")
            out.append((name, value))
        return tuple(out)


def _field(ident: Identity, attribute: str) -> str | None:
    value = getattr(ident, attribute)
    return ",".join(value) if isinstance(value, (tuple, list)) else value


def app_identity(config: Config, upstream: UpstreamConfig | None,
                 signer: AssertionSigner | None = None) -> AppIdentity:
    """The compiled identity of ``upstream`` (its own template, else the global one); None: the global."""
    if upstream is None:
        return AppIdentity(config.identity_headers)
    return AppIdentity(upstream.identity_headers or config.identity_headers, upstream.identity_assertion,
                       upstream.url, signer)
