"""The redirect guard: ``safe_redirect`` turns any target that came from a request into a URL on our origin.

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
# After percent-decoding, a space is harmless, but controls and backslashes are not.
_UNSAFE_DECODED = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_redirect(target: str | None, config: Config, default: str = "/") -> str:
    """An absolute URL on ``public_url``'s origin for ``target``, or for ``default`` if it is unsafe.

    Accepted: a path starting with exactly one ``/`` ("/a?b"), or an absolute http(s) URL whose
    origin is exactly ``public_url``'s without userinfo; non-ASCII characters are percent-encoded
    first, as a browser would. Everything else — scheme-relative (``//host``), backslashes, encoded
    slashes that decode to ``//``, other schemes, controls, ``"<>``, a result longer than
    ``MAX_REDIRECT_LENGTH`` — falls back to ``default``.
    """
    origin = config.public_origin
    for candidate in (target, default):
        path = _same_origin_path(candidate, origin)
        if path is not None and len(origin) + len(path) <= MAX_REDIRECT_LENGTH:
            return origin + path
    return origin + "/"


def _same_origin_path(target: str | None, origin: str) -> str | None:
    target = _encode_non_ascii(target) if target else None
    if not target or len(target) > MAX_REDIRECT_LENGTH or _UNSAFE_REDIRECT.search(target):
        return None
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.scheme.lower() not in ("http", "https") or parts.username or parts.password or "@" in parts.netloc:
            return None
        if f"{parts.scheme.lower()}://{parts.netloc.lower()}" != origin and \
                _default_port_origin(parts.scheme.lower(), parts.netloc.lower()) != origin:
            return None
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
    return target


def _encode_non_ascii(target: str) -> str | None:
    """``target`` with every non-ASCII character percent-encoded as UTF-8, as a browser sends a URL
    (WHATWG URL §4.4: path and query are UTF-8 percent-encoded), so "/café" is kept as "/caf%C3%A9"
    and a look-alike ("/／／evil") becomes a path of our own. None if it cannot be encoded."""
    try:
        return quote(target, safe=_ASCII)
    except UnicodeEncodeError:          # a lone surrogate
        return None


def _default_port_origin(scheme: str, netloc: str) -> str:
    default = {"http": ":80", "https": ":443"}[scheme]
    return f"{scheme}://{netloc[:-len(default)]}" if netloc.endswith(default) else ""
