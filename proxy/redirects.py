"""The redirect guard: ``safe_redirect`` turns any target that came from a request into a URL on our origin
or on a host ``allowed_hosts`` lists (gateway mode: many apps on many hosts, one sign-in).

Every redirect authproxy sends after a sign-in or sign-out goes to a target the request named (``rd``,
the page to return to), so a target an attacker wrote must never take the browser elsewhere (an open
redirect, RFC 9700 §4.11). The guard accepts only what a browser reads as our own origin — compared
with chromium on every payload in tests/e2e — and falls back to a default otherwise. Its own module
because login and the app's error pages both use it, and because it is a parser of its own, fuzzed
(tests/fuzz) and tested payload by payload (tests/unit/test_redirects.py).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from .config import Config
from .errors import BadRequest
from .paths import normalize_path

# Longest redirect target kept, as the absolute URL it becomes. The target rides in the login cookie,
# and browsers drop a cookie whose name and value exceed 4096 bytes (RFC 6265 §6.1; chromium does so
# silently), which would turn a long deep link into a sign-in that can never complete. 2048 leaves
# that cookie about 1 KB of room; a longer target falls back to the default.
MAX_REDIRECT_LENGTH = 2048
# Characters never allowed in a redirect target: controls (CR/LF injection), backslash (browsers
# read "\" as "/"), spaces, and '"', "<", ">", which RFC 3986 excludes and browsers always send
# percent-encoded (so only a hand-made target has them raw; '"' would also double in the cookie).
_UNSAFE_REDIRECT = re.compile(r'[\x00-\x20\x7f\\"<>]')
# Every ASCII character: ``quote`` keeps these as they are and percent-encodes the rest.
_ASCII = "".join(map(chr, range(128)))
# The authority of an absolute target: a host name or IPv4 address (no userinfo, no IPv6), then a port.
_NETLOC = re.compile(r"([a-z0-9-]+(?:\.[a-z0-9-]+)*)(?::([0-9]{1,5}))?")
# After percent-decoding, a space is harmless, but controls and backslashes are not.
_UNSAFE_DECODED = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_redirect(target: str | None, config: Config, default: str = "/") -> str:
    """An absolute URL on ``public_url``'s origin or an allowed host's for ``target``, or for ``default``
    if it is unsafe.

    Accepted: a path starting with exactly one ``/`` ("/a?b", on ``public_url``'s origin), or an absolute
    URL with ``public_url``'s scheme, no userinfo, and either ``public_url``'s origin or a host that
    ``allowed_hosts`` lists (``allowed_origin``); non-ASCII characters are percent-encoded first, as a
    browser would. Everything else — scheme-relative (``//host``), backslashes, encoded slashes that
    decode to ``//``, other schemes or hosts, controls, ``"<>``, a result longer than
    ``MAX_REDIRECT_LENGTH`` — falls back to ``default``.
    """
    for candidate in (target, default):
        found = _allowed_path(candidate, config)
        if found is not None and len(found[0]) + len(found[1]) <= MAX_REDIRECT_LENGTH:
            return found[0] + found[1]
    return config.public_origin + "/"


def allowed_origin(config: Config, scheme: str, netloc: str) -> str | None:
    """``scheme://host[:port]`` (lowercased, no default port) if it is ``public_url``'s origin or names a host
    ``allowed_hosts`` allows, with ``public_url``'s scheme (never a downgrade to http); else None.

    A host matches an entry exactly, or, for ".example.com", when it is example.com or ends in
    ".example.com" (on a label boundary: ``allowed.example.com.evil`` and ``evilexample.com`` do not);
    the port must be the scheme's default unless the entry names it or says ":*"."""
    scheme, netloc = scheme.lower(), netloc.lower()
    match = _NETLOC.fullmatch(netloc)
    if scheme not in ("http", "https") or match is None:
        return None
    host, port = match[1], match[2]
    default = {"http": "80", "https": "443"}[scheme]
    port = None if port == default else port
    origin = f"{scheme}://{host}" + (f":{port}" if port else "")
    if origin == config.public_origin:
        return origin
    if scheme != config.public_origin.split(":", 1)[0]:
        return None
    for entry in config.allowed_hosts:
        name, _, allowed_port = entry.partition(":")
        if not (host == name or (name.startswith(".") and (host == name[1:] or host.endswith(name)))):
            continue
        if allowed_port == "*" or (allowed_port or None) == port:
            return origin
    return None


def _allowed_path(target: str | None, config: Config) -> tuple[str, str] | None:
    """``(origin, path)`` for a safe target, else None."""
    target = _encode_non_ascii(target) if target else None
    if not target or len(target) > MAX_REDIRECT_LENGTH or _UNSAFE_REDIRECT.search(target):
        return None
    origin = config.public_origin
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.username or parts.password or "@" in parts.netloc:
            return None
        absolute = allowed_origin(config, parts.scheme, parts.netloc)
        if absolute is None:
            return None
        origin = absolute
        # The rest as written, so a browser reads it as we do (an empty "?" or a fragment included).
        rest = target[len(parts.scheme) + len("://") + len(parts.netloc):]
        target = rest if rest.startswith("/") else "/" + rest
    if target.startswith("//"):
        return None
    decoded = target
    for _ in range(3):          # repeated decoding must not reveal "//" or "/\" either
        decoded = unquote(decoded)
        if decoded.startswith("//") or decoded.startswith("/\\") or _UNSAFE_DECODED.search(decoded.split("?")[0]):
            return None
    try:
        normalize_path(target)          # never send a browser to a path the gate refuses (a 400 page)
    except BadRequest:
        return None
    return origin, target


def here(request: web.Request, config: Config) -> str:
    """The request's own URL as a target to come back to: its path, or, on an allowed host other than
    ``public_url``'s, the absolute URL there (``safe_redirect`` still checks it)."""
    origin = allowed_origin(config, config.public_origin.split(":", 1)[0], request.host)
    if origin is None or origin == config.public_origin:
        return request.raw_path
    return origin + request.raw_path


def _encode_non_ascii(target: str) -> str | None:
    """``target`` with every non-ASCII character percent-encoded as UTF-8, as a browser sends a URL
    (WHATWG URL §4.4: path and query are UTF-8 percent-encoded), so "/café" is kept as "/caf%C3%A9"
    and a look-alike ("/／／evil") becomes a path of our own. None if it cannot be encoded."""
    try:
        return quote(target, safe=_ASCII)
    except UnicodeEncodeError:          # a lone surrogate
        return None
