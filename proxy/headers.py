"""The header policy: which fields pass between the client and the app, and which the proxy sets itself.

What the proxy owns is stripped from the request before anything is added: the client's
``Authorization`` and identity headers (a client must never assert who it is), headers that ask the
app to serve another path than the one every rule checked (``X-Original-URL``…), the proxy's own
cookies, and hop-by-hop headers (RFC 9110 §7.6.1); from a request forwarded without a session, also
every method-override header. Then the proxy adds its own: ``Host``, ``X-Forwarded-For/-Proto/-Host``
(a trusted proxy's view of the client kept; from anyone else the peer, ``public_url``'s scheme and host),
the request id, then what the upstream's template (``identity.py``) tells the app: by default the Bearer
token and the ``X-Forwarded-User/-Email/-Preferred-Username/-Groups`` headers. Every header name that any
upstream's template or assertion uses is stripped from every request too. On the way back, hop-by-hop fields and any
``Set-Cookie`` that names one of the proxy's cookies is dropped: an app must not set or clear our session.

``HeaderPolicy`` holds what these rules need from the config, built once with the ``Forwarder``; both
the HTTP forwarding (``upstream/forward.py``) and the WebSocket handshake (``upstream/websocket.py``) use it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .context import REQUEST_ID

if TYPE_CHECKING:
    from .config import Config
    from .identity import AppIdentity
    from .session import Session

# The forwarding logger, as in upstream/forward.py and relay.py: an operator filters all forwarding by one name.
log = logging.getLogger("authproxy.upstream")

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones still seen in the wild; they describe
# one connection and must not be forwarded. Headers named in ``Connection`` are dropped too.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization", "expect",
})
_HOP_BY_HOP_NAMES = tuple(sorted(HOP_BY_HOP))
# Set by the proxy only. Whatever a client sends under these names is dropped first, including
# spellings with "_" that some app servers (CGI, WSGI) treat as the same header.
PROXY_SET = frozenset({
    "authorization", "x-forwarded-user", "x-forwarded-email", "x-forwarded-preferred-username",
    "x-forwarded-groups", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-forwarded-uri", "x-forwarded-prefix", "x-forwarded-access-token", "x-real-ip", "forwarded",
    "x-auth-request-user", "x-auth-request-email", "x-auth-request-groups",
    "x-auth-request-preferred-username", "x-auth-request-access-token",
})
# Ask an app to serve another path than the request line's (Symfony, Zend and IIS URL Rewrite honour
# X-Original-URL / X-Rewrite-URL; X-Original-URI and X-Envoy-Original-Path are other proxies' names for
# the same): routing and every rule here read the request line, so the app must too. Always dropped.
PATH_OVERRIDE = frozenset({"x-original-url", "x-rewrite-url", "x-original-uri", "x-envoy-original-path",
                           "x-forwarded-path"})
# Ask an app (Rails, Laravel, Express's method-override, Spring's HiddenHttpMethodFilter…) to treat the
# request as another method. Dropped from every request forwarded without a session (skip_auth,
# preflights): a rule that lets GET through must not let a GET become a DELETE. Matched like PROXY_SET.
METHOD_OVERRIDE = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
# Re-added by the proxy: Host and Content-Length as they must be, Cookie without ours, and the request id
# (the client's when it looks like one, else a new one: the same id the proxy logs and answers with).
_DROPPED_REQUEST = HOP_BY_HOP | PROXY_SET | PATH_OVERRIDE | {"host", "cookie", "content-length", "x-request-id"}
# Also dropped when spelt with "_" (CGI and WSGI servers read X_Original_URL as X-Original-URL).
_DROPPED_ANY_SPELLING = PROXY_SET | PATH_OVERRIDE


def identity_headers(session: Session) -> dict[str, str]:
    """The headers that tell the app who the user is."""
    ident = session.identity
    headers = {"X-Forwarded-User": ident.sub}
    if ident.email:
        headers["X-Forwarded-Email"] = ident.email
    if ident.preferred_username:
        headers["X-Forwarded-Preferred-Username"] = ident.preferred_username
    if ident.groups:
        headers["X-Forwarded-Groups"] = ",".join(ident.groups)
    return headers


def strip_cookies(header: str, is_ours: frozenset[str] | None, prefixes: tuple[str, ...]) -> str:
    """The ``Cookie`` header without the proxy's own cookies (session, chunks, login state)."""
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and not (is_ours and name in is_ours) and not name.startswith(prefixes):
            kept.append(part.strip())
    return "; ".join(kept)


def _overrides_method(name: str) -> bool:
    """Whether a field asks the app to use another method (any letter case, "_" for "-")."""
    return name.lower().replace("_", "-") in METHOD_OVERRIDE


class HeaderPolicy:
    """The header rules for one config: the proxy's cookie names, its trusted proxies, its public scheme."""

    def __init__(self, config: Config) -> None:
        from .identity import all_names, app_identity      # identity.py imports this module's constants

        name = config.cookie.name
        # The global template, for a caller that names no upstream's; and every name any template sets.
        self._default_identity = app_identity(config, None)
        self._template_names = all_names(config)
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        self._trust_cache: dict[str, bool] = {}
        self._drop_cache: dict[str, bool] = {}
        # A browser sends the same Cookie header for a while: what is left of it without ours, per header.
        self._strip_cache: dict[str, str] = {}
        self._own_cookie_prefixes = (name + "_",)
        self._own_cookies = frozenset({name})
        self._own_cookie_lower = name.lower()
        public = URL(config.public_url)
        self._proto = public.scheme
        # X-Forwarded-Host from a peer that is not a trusted proxy: the host users reach us by, never the
        # client's Host (an app building links from it would let a client choose where they point).
        self._public_host = public.raw_authority

    def is_trusted(self, peer: str) -> bool:
        """Whether the connecting peer is a configured trusted proxy (parsed once per address)."""
        trusted = self._trust_cache.get(peer)
        if trusted is None:
            try:
                address = ipaddress.ip_address(peer)
                trusted = any(address in network for network in self._trusted)
            except ValueError:
                trusted = False
            if len(self._trust_cache) > 4096:
                self._trust_cache.clear()
            self._trust_cache[peer] = trusted
        return trusted

    def _sets_own_cookie(self, set_cookie: str) -> bool:
        """An app must not set (or clear) the proxy's session or login cookies — not by name, and not
        inside another cookie's value either: ``pref=dark _authproxy=<sealed>`` is one cookie to a
        browser, but a parser that ends a pair at whitespace (aiohttp's, and others an operator may
        run in front) reads a second ``_authproxy`` in it. Any line that mentions one of our names,
        in any case (browsers match ``__Host-`` case-insensitively), is dropped."""
        return self._own_cookie_lower in set_cookie.lower()     # our names all start with it

    def _dropped(self, name: str) -> bool:
        """Whether a request field is the proxy's or hop-by-hop, remembered per spelling: the same
        dozen names arrive on every request, so this saves a ``lower()``, a ``replace()`` and two set
        look-ups per field (1.1 → 0.5 µs for a browser's ten fields)."""
        dropped = self._drop_cache.get(name)
        if dropped is None:
            lower = name.lower()
            spelt = lower.replace("_", "-")
            dropped = lower in _DROPPED_REQUEST or spelt in _DROPPED_ANY_SPELLING or spelt in self._template_names
            if len(self._drop_cache) > 1024:
                self._drop_cache.clear()
            self._drop_cache[name] = dropped
        return dropped

    def request_headers(self, request: web.Request, session: Session | None, host: str | None = None,
                        identity: AppIdentity | None = None) -> CIMultiDict[str]:
        return CIMultiDict(self.request_items(request, session, host, identity))

    def request_items(self, request: web.Request, session: Session | None, host: str | None = None,
                      identity: AppIdentity | None = None) -> list[tuple[str, str]]:
        """The upstream request's header fields, in order: the client's less what the proxy owns, then
        the proxy's own (cookies stripped of ours, Host, X-Forwarded-*, then the upstream's identity).
        ``host``: the ``Host`` the upstream wants (``Upstream.host_header``); None passes the client's.
        ``identity``: the upstream's compiled template (``Upstream.identity``); None, the global one."""
        incoming = request.headers
        # Every Connection line counts: a list field's lines are one list (RFC 9110 §5.3).
        connection = ",".join(incoming.getall("Connection", ()))
        listed = {t.strip().lower() for t in connection.split(",") if t.strip()} if connection else None
        dropped = self._dropped
        headers = [(name, value) for name, value in incoming.items()
                   if not dropped(name) and not (listed and name.lower() in listed)]
        if session is None:
            headers = [(name, value) for name, value in headers if not _overrides_method(name)]
        cookie = incoming.get("Cookie")
        if cookie:
            kept = self._strip_cache.get(cookie)
            if kept is None:
                kept = strip_cookies(cookie, self._own_cookies, self._own_cookie_prefixes)
                if len(cookie) <= 32 * 1024:               # 128 of them: at most 4 MiB
                    if len(self._strip_cache) >= 128:
                        self._strip_cache.clear()
                    self._strip_cache[cookie] = kept
            if kept:
                headers.append(("Cookie", kept))
        length = incoming.get("Content-Length")
        if length is not None:
            headers.append(("Content-Length", length))
        headers.append(("Host", request.host if host is None else host))
        peer = request.remote or ""
        if self._trusted and self.is_trusted(peer):
            # A trusted balancer's view of the client is kept, and the balancer appended to it.
            chain = incoming.get("X-Forwarded-For")
            headers.append(("X-Forwarded-For", f"{chain}, {peer}" if chain else peer))
            headers.append(("X-Forwarded-Proto", incoming.get("X-Forwarded-Proto", self._proto)))
            headers.append(("X-Forwarded-Host", incoming.get("X-Forwarded-Host", request.host)))
        else:
            headers.append(("X-Forwarded-For", peer))
            headers.append(("X-Forwarded-Proto", self._proto))
            headers.append(("X-Forwarded-Host", self._public_host))
        request_id = request.get(REQUEST_ID)
        if request_id:
            headers.append(("X-Request-Id", request_id))
        if session is not None:
            headers += (identity or self._default_identity).items(session)
        return headers

    def response_headers(self, items: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        """The upstream's response fields less hop-by-hop ones (and those its ``Connection`` names) and any
        Set-Cookie of the proxy's cookies, in the upstream's order.

        Once per proxied request, so built in C where it can be: the multidict made from every field at once,
        the hop-by-hop names taken out by name (0.8 µs for a typical answer's five fields; a Python loop over
        the fields took 1.8). Only an answer that sets one of our cookies is rebuilt field by field."""
        headers: CIMultiDict[str] = CIMultiDict(items)
        connection = ",".join(headers.getall("Connection", ()))    # all its lines: one list (RFC 9110 §5.3)
        for name in _HOP_BY_HOP_NAMES:
            if name in headers:
                headers.popall(name)
        if connection:
            for token in connection.split(","):
                token = token.strip()
                if token and token in headers:
                    headers.popall(token)
        if "Set-Cookie" in headers and any(self._sets_own_cookie(v) for v in headers.getall("Set-Cookie")):
            kept: CIMultiDict[str] = CIMultiDict()
            for name, value in headers.items():
                if name.lower() == "set-cookie" and self._sets_own_cookie(value):
                    log.warning("dropped an upstream Set-Cookie that names the proxy's cookie")
                    continue
                kept.add(name, value)
            return kept
        return headers
