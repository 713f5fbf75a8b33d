"""Forwarding to the app behind the proxy — the only module that talks to upstreams.

Each upstream has one pooled ``aiohttp.ClientSession`` with no cookie jar (the browser's cookies are
the app's business, not ours to keep), no redirect following (the app's redirects go back to the
browser as they are) and no decompression (``Content-Encoding`` passes through untouched). Bodies
stream both ways in chunks as they arrive, so memory stays flat for any size and server-sent events
reach the browser as the app writes them.

What the proxy owns is stripped from the request before anything is added: the client's
``Authorization`` and identity headers (a client must never assert who it is), the proxy's own
cookies, and hop-by-hop headers (RFC 9110 §7.6.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Config, UpstreamConfig
from .errors import UpstreamError, UpstreamTimeout
from .session import Session

log = logging.getLogger("authproxy.upstream")

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones still seen in the wild; they describe
# one connection and must not be forwarded. Headers named in ``Connection`` are dropped too.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization", "expect",
})
# Set by the proxy only. Whatever a client sends under these names is dropped first, including
# spellings with "_" that some app servers (CGI, WSGI) treat as the same header.
PROXY_SET = frozenset({
    "authorization", "x-forwarded-user", "x-forwarded-email", "x-forwarded-preferred-username",
    "x-forwarded-groups", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-forwarded-uri", "x-forwarded-prefix", "x-forwarded-access-token", "x-real-ip", "forwarded",
    "x-auth-request-user", "x-auth-request-email", "x-auth-request-groups",
    "x-auth-request-preferred-username", "x-auth-request-access-token",
})
_DROPPED_REQUEST = HOP_BY_HOP | PROXY_SET | {"host", "cookie", "content-length"}
# Bytes read from the upstream per write to the client.
CHUNK = 64 * 1024


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


class Upstream:
    """One ``upstreams[]`` entry with its pooled client."""

    def __init__(self, config: UpstreamConfig, client: aiohttp.ClientSession) -> None:
        self.config = config
        self.prefix = config.path.rstrip("/")
        self.base = config.url.rstrip("/")
        self.client = client
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                             sock_read=config.timeout)

    def matches(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")


def make_client(config: UpstreamConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))


class Forwarder:
    """Routes a request to its upstream and streams the exchange."""

    def __init__(self, config: Config, upstreams: Iterable[Upstream]) -> None:
        # Longest prefix first, so the first match is the most specific.
        self.upstreams = sorted(upstreams, key=lambda u: len(u.prefix), reverse=True)
        name = config.cookie.name
        self._own_cookie_prefixes = (name + "_",)
        self._own_cookies = frozenset({name})
        self._proto = URL(config.public_url).scheme

    def route(self, path: str) -> Upstream | None:
        for upstream in self.upstreams:
            if upstream.matches(path):
                return upstream
        return None

    def request_headers(self, request: web.Request, session: Session | None) -> CIMultiDict[str]:
        incoming = request.headers
        connection_listed = {t.strip().lower() for t in incoming.get("Connection", "").split(",") if t.strip()}
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in incoming.items():
            lower = name.lower()
            if lower in _DROPPED_REQUEST or lower in connection_listed or lower.replace("_", "-") in PROXY_SET:
                continue
            headers.add(name, value)
        cookie = incoming.get("Cookie")
        if cookie:
            kept = strip_cookies(cookie, self._own_cookies, self._own_cookie_prefixes)
            if kept:
                headers["Cookie"] = kept
        if "Content-Length" in incoming:
            headers["Content-Length"] = incoming["Content-Length"]
        headers["Host"] = request.host
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = self._proto
        headers["X-Forwarded-Host"] = request.host
        if session is not None:
            headers["Authorization"] = f"Bearer {session.access_token}"
            headers.update(identity_headers(session))
        return headers

    async def forward(self, request: web.Request, upstream: Upstream, session: Session | None) -> web.StreamResponse:
        url = URL(upstream.base + request.raw_path, encoded=True)
        headers = self.request_headers(request, session)
        body = request.content if request.body_exists else None
        try:
            resp = await upstream.client.request(request.method, url, headers=headers, data=body,
                                                 allow_redirects=False, timeout=upstream.timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The application at {upstream.config.path} did not answer in time.") from None
        except aiohttp.ClientError as exc:
            log.warning("upstream %s failed: %s", upstream.config.url, type(exc).__name__)
            raise UpstreamError(f"The application at {upstream.config.path} could not be reached.") from None
        try:
            return await self._relay(request, resp)
        finally:
            resp.close() if not resp.content.at_eof() else resp.release()

    async def _relay(self, request: web.Request, resp: aiohttp.ClientResponse) -> web.StreamResponse:
        out = web.StreamResponse(status=resp.status, reason=resp.reason)
        connection_listed = {t.strip().lower() for t in resp.headers.get("Connection", "").split(",")}
        for name, value in resp.headers.items():
            lower = name.lower()
            if lower not in HOP_BY_HOP and lower not in connection_listed:
                out.headers.add(name, value)
        await out.prepare(request)
        if request.method != "HEAD" and resp.status not in (204, 304):
            try:
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # Headers are gone already: all we can do is end the client's response early.
                log.warning("upstream response broke off: %s", type(exc).__name__)
                request.transport and request.transport.close()
                return out
        await out.write_eof()
        return out


FORWARDER = web.AppKey("authproxy_forwarder", Forwarder)
