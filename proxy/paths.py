"""Request paths: the one path a request is forwarded with, the key every rule matches, and what is refused.

authproxy sits behind front servers (nginx, Caddy, Traefik, HAProxy) and in front of apps (Tomcat, IIS,
Express…), and each reads the bytes of a path its own way. A path that two of them read differently is
how a request passes one's rule and reaches another's resource: ``/oauth2/..\\admin`` is under
``/oauth2/`` for nginx (``\\`` is an ordinary byte on Unix) and ``/admin`` for a server that treats
``\\`` as ``/``. So instead of guessing, every request path is decoded once and **refused with a 400** when
it holds anything servers disagree about:

- a backslash, raw or percent-encoded (RFC 3986 gives it no meaning; IIS, Windows apps and browsers read
  it as ``/``);
- a dot segment, ``.`` or ``..``, raw, percent-encoded (``%2e``) or with segment parameters (``..;x``,
  which Tomcat resolves): browsers resolve dot segments before sending (WHATWG URL), nginx resolves
  them, so only a crafted request carries one, and resolving it is what moves a request out of the
  prefix a front server matched;
- double encoding (``%252e``, or ``%25%32%65``: once decoded, still a percent-encoding): an app that
  decodes again would see a different path than every rule here; and a ``%`` without two hex digits
  (``%zz``, IIS's ``%u002e``), which RFC 3986 §2.1 does not allow and nginx and HAProxy refuse too;
- NUL, and bytes that are not UTF-8 once decoded (overlong forms such as ``%c0%ae`` included);
- non-ASCII characters that compatibility-normalise (NFKC) or best-fit map to ``.``, ``/``, ``\\``,
  ``%``, ``;``, ``?``, ``#`` or ``:`` (``．``, ``／``, ``∕``…): IIS and Windows' best-fit code pages turn them
  into the real ones.

What remains is unambiguous: percent-decoded once, empty segments collapsed (as nginx's
``merge_slashes``), encoded again (``normalize_path``) — and that is both what the upstream receives
and what routing starts from. Routing and every rule (upstream prefixes, ``skip_auth``, ``api_paths``,
preflight paths, the proxy's own ``/oauth2/`` namespace) match the **match key** (``match_key``):
that path with segment parameters (``;jsessionid=1``, RFC 3986 §3.3) removed, since Tomcat, Jetty
and Spring drop them before routing. The request still goes upstream with its parameters.

An absolute-form request target (``GET http://host/x``, RFC 9112 §3.2.2) is read by its path only.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote

from aiohttp import web

from .errors import BadRequest

# The proxy's own namespace: nothing under it is ever forwarded (an unknown path there is a 404).
OWN_PREFIX = "/oauth2"
# Characters left as they are when a normalised path is encoded again for the upstream
# (RFC 3986 §3.3 pchar without "%", plus "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# Raw paths containing none of these are already normal: the common case skips the work.
_NEEDS_NORMALISING = re.compile(r"%|/\.|//|\\|[^!-~]")
# A "%" that encodes nothing (RFC 3986 §2.1); once decoded, a percent-encoding that is left.
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
# The scheme and authority of an absolute-form request target (RFC 9112 §3.2.2).
_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
# ASCII punctuation that structures a path: a non-ASCII character that turns into one is refused.
_STRUCTURAL = frozenset("./\\%;?#:")
# Characters Windows' best-fit mappings (and some libraries) turn into "/" or "\" without NFKC saying so.
_BEST_FIT_SLASHES = frozenset("\u2215\u2044\u2216\u29f5\u29f8\u29f9\u2571\u2572")
# Segment parameters (RFC 3986 §3.3), removed from the match key.
_PARAMS = re.compile(r";[^/]*")

NORMALISED_PATH = web.RequestKey("authproxy_normalised_path", str)
MATCH_KEY = web.RequestKey("authproxy_match_key", str)


def origin_path(raw_target: str) -> str:
    """The path of a request target: query and fragment removed, an absolute form's scheme and authority too."""
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if path and not path.startswith("/"):
        absolute = _ABSOLUTE_FORM.match(path)
        if absolute is None:
            raise BadRequest("The request target is not a path.")
        path = path[absolute.end():]
    return path or "/"


def normalize_path(raw_target: str) -> str:
    """The one path a request is forwarded with: decoded once, refused if ambiguous, encoded again.

    Raises BadRequest for every class in the module docstring.
    """
    path = origin_path(raw_target)
    if not _NEEDS_NORMALISING.search(path):
        return path
    if _BAD_PERCENT.search(path):
        raise BadRequest("The request path has a % that encodes nothing.")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("The request path is not valid UTF-8 after percent-decoding.") from None
    _refuse_ambiguous(decoded)
    segments = [segment for segment in decoded.split("/") if segment]
    trailing = "/" if decoded.endswith("/") and segments else ""
    return quote("/" + "/".join(segments) + trailing, safe=_PATH_SAFE)


def _refuse_ambiguous(decoded: str) -> None:
    """BadRequest if the decoded path holds a byte or segment that servers read differently."""
    if "\x00" in decoded:
        raise BadRequest("The request path contains a NUL byte.")
    if "%" in decoded and _ENCODED.search(decoded):
        raise BadRequest("The request path is percent-encoded twice.")
    if "\\" in decoded:
        raise BadRequest("The request path contains a backslash.")
    if not decoded.isascii() and any(_confusable(char) for char in decoded if not char.isascii()):
        raise BadRequest("The request path contains a character that other servers read as path punctuation.")
    for segment in decoded.split("/"):
        if segment.split(";", 1)[0] in (".", ".."):
            raise BadRequest("The request path contains a dot segment.")


def _confusable(char: str) -> bool:
    return char in _BEST_FIT_SLASHES or any(c in _STRUCTURAL for c in unicodedata.normalize("NFKC", char))


def match_key(path: str) -> str:
    """``path`` (normalised) without segment parameters: what routing and every rule match."""
    if ";" not in path:
        return path
    segments = [segment for segment in _PARAMS.sub("", path).split("/") if segment]
    trailing = "/" if path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def strip_segments(path: str, count: int) -> str:
    """``path`` without its first ``count`` named segments (and any parameter-only ones before them):
    ``strip_prefix`` for a path whose match key dropped ``;params``."""
    segments = path.split("/")[1:]
    index = 0
    while count and index < len(segments):
        if segments[index].split(";", 1)[0]:
            count -= 1
        index += 1
    return "/" + "/".join(segments[index:])


def is_own_path(key: str) -> bool:
    """Whether a match key lies in the proxy's own ``/oauth2`` namespace."""
    return key == OWN_PREFIX or key.startswith(OWN_PREFIX + "/")


def normalized_path(request: web.Request) -> str:
    """The request's normalised path (what the upstream receives), computed once per request."""
    path = request.get(NORMALISED_PATH)
    if path is None:
        path = request[NORMALISED_PATH] = normalize_path(request.raw_path)
    return path


def request_key(request: web.Request) -> str:
    """The request's match key, computed once per request."""
    key = request.get(MATCH_KEY)
    if key is None:
        key = request[MATCH_KEY] = match_key(normalized_path(request))
    return key
