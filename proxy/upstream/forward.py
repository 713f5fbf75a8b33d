"""Forwarding a request to the app behind the proxy: routing, and the choice of client.

Routing first, on the request's match key (``paths.py``: the normalised path without segment
parameters): the longest ``upstreams[].path`` prefix that matches wins, and the normalised path, with
its parameters, is forwarded. Then one of two clients carries the request:

- the lean HTTP/1.1 client (``http1*.py``) for a plain-HTTP or unix-socket upstream, when the request has
  no body and nothing unusual (``is_lean``) or a body large enough to move inside the kernel
  (``splice_upload_length``);
- else the upstream's pooled ``aiohttp.ClientSession``, with no cookie jar (the browser's cookies are
  the app's business, not ours to keep), no redirect following (the app's redirects go back to the
  browser as they are) and no decompression (``Content-Encoding`` passes through untouched).

Request bodies stream up in chunks as they arrive, so memory stays flat for any size. Which header
fields go along either way is ``headers.py``'s business; sending the response on to the client is
``relay.py``'s; WebSocket upgrades go through ``websocket.py`` instead.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config import Config, UpstreamConfig
from ..crypto import tls_context
from ..errors import BadRequest, UpstreamError, UpstreamTimeout
from ..assertion import AssertionSigner
from ..headers import HeaderPolicy
from ..identity import AppIdentity, app_identity
from ..metrics import METRICS
from ..paths import normalized_path, strip_segments
from ..session import Session
from ..tracing import inject, inject_items, span
from . import splice
from .http1 import Http1Error, Http1Response, Http1Timeout
from .http1_pool import Http1Pool, serialize_head
from .relay import relay

log = logging.getLogger("authproxy.upstream")

# RFC 9110 §9.2.2: a request with one of these methods may be sent again after a connection failure.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose requests normally have no body; a request with another and no body says Content-Length: 0.
_BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
# Methods the lean client leaves to aiohttp: HEAD's response has a Content-Length but no body (httptools
# cannot be told to expect none); CONNECT is a tunnel.
_NOT_LEAN_METHODS = frozenset({"HEAD", "CONNECT"})

# The ``path`` of the upstream a request went to, for metrics and logs.
UPSTREAM_LABEL = web.RequestKey("authproxy_upstream_label", str)


class Upstream:
    """One ``upstreams[]`` entry with its pooled client."""

    def __init__(self, config: UpstreamConfig, client: aiohttp.ClientSession) -> None:
        self.config = config
        self.prefix = config.path.rstrip("/")
        self.prefix_segments = self.prefix.count("/")
        # A unix socket is reached through its connector; the URL only supplies the path.
        self.base = "http://localhost" if config.url.startswith("unix:") else config.url.rstrip("/")
        self.host = None if config.url.startswith("unix:") else URL(config.url).raw_authority
        # The path part of the upstream's URL (``http://app:8080/mounted``), before every request target.
        self.base_path = "" if config.url.startswith("unix:") else URL(config.url).raw_path.rstrip("/")
        # The Host it is sent: its own authority, unless ``pass_host_header`` (or a unix socket) passes the client's.
        self.host_header = None if config.pass_host_header else self.host
        self.client = client
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout,
                                             sock_read=config.timeout)
        self.lean = lean_pool(config)
        # What the app is told about the user (identity.py), compiled by the Forwarder with the signer.
        self.identity: AppIdentity | None = None

    def matches(self, key: str) -> bool:
        """Whether a match key (``paths.match_key``) lies under this upstream's prefix, on whole segments."""
        return not self.prefix or key == self.prefix or key.startswith(self.prefix + "/")

    def target(self, path: str, query: str) -> URL:
        """The upstream URL for a normalised path, with ``strip_prefix`` applied."""
        return URL(self.base + self.request_target(path, query), encoded=True)

    def request_target(self, path: str, query: str) -> str:
        """The origin-form request target (RFC 9112 §3.2.1): the path with ``strip_prefix`` applied (by
        segments, as the prefix matched the match key: ``/app;x/y`` loses ``/app;x``), the query."""
        if self.config.strip_prefix and self.prefix:
            path = strip_segments(path, self.prefix_segments)
        return path + (f"?{query}" if query else "")


def lean_pool(config: UpstreamConfig) -> Http1Pool | None:
    """The lean client's pool for a plain-HTTP or unix-socket upstream; None for TLS (aiohttp's client)."""
    if config.url.startswith("unix:"):
        return Http1Pool(unix_path=config.url[len("unix:"):], connect_timeout=config.connect_timeout,
                         read_timeout=config.timeout)
    url = URL(config.url)
    if url.scheme != "http" or url.host is None:
        return None
    return Http1Pool(host=url.raw_host, port=url.port or 80, connect_timeout=config.connect_timeout,
                     read_timeout=config.timeout)


def make_client(config: UpstreamConfig) -> aiohttp.ClientSession:
    """One pooled client per upstream: keep-alive connections, no cookie jar, no decompression."""
    connector: aiohttp.BaseConnector
    if config.url.startswith("unix:"):
        connector = aiohttp.UnixConnector(path=config.url[len("unix:"):], limit=0, keepalive_timeout=60)
    else:
        ssl_ctx: ssl.SSLContext | bool = True
        if config.tls.insecure_skip_verify:
            ssl_ctx = False
        elif config.tls.ca_file:
            ssl_ctx = tls_context(config.tls.ca_file)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300,
                                         ssl=ssl_ctx)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))


class Forwarder:
    """Routes a request to its upstream and carries the exchange."""

    def __init__(self, config: Config, upstreams: Iterable[Upstream], signer: AssertionSigner | None = None) -> None:
        # Those for a host first, then longest prefix first, so the first match is the most specific.
        self.upstreams = sorted(upstreams, key=lambda u: (u.config.host is None, -len(u.prefix)))
        self.headers = HeaderPolicy(config)
        if signer is None and any(u.identity_assertion for u in config.upstreams):
            signer = AssertionSigner(config.cookie.keys, config.public_url)
        for upstream in self.upstreams:
            upstream.identity = app_identity(config, upstream.config, signer)

    def route(self, key: str, host: str | None = None) -> Upstream | None:
        """The upstream for a match key (``paths.request_key``) on ``host`` (lowercased, without port), or
        None: one for that host if any matches, else one for no host in particular."""
        for upstream in self.upstreams:
            if (upstream.config.host is None or upstream.config.host == host) and upstream.matches(key):
                return upstream
        return None

    def request_headers(self, request: web.Request, session: Session | None, upstream: Upstream) -> CIMultiDict[str]:
        """The header policy's fields for a request to ``upstream``, with the ``Host`` it wants."""
        return self.headers.request_headers(request, session, upstream.host_header, upstream.identity)

    async def forward(self, request: web.Request, upstream: Upstream, session: Session | None) -> web.StreamResponse:
        request[UPSTREAM_LABEL] = upstream.config.path
        if upstream.lean is not None:
            if is_lean(request):
                return await self._forward_lean(request, upstream, upstream.lean, session)
            if (length := splice_upload_length(request)) is not None:
                return await self._forward_lean(request, upstream, upstream.lean, session, body_length=length)
        url = upstream.target(normalized_path(request), request.rel_url.raw_query_string)
        headers = self.headers.request_headers(request, session, upstream.host_header, upstream.identity)
        body = request.content if request.body_exists else None
        started = time.perf_counter()
        try:
            with span("upstream", client=True, **{"server.address": upstream.config.url}) as current:
                inject(headers)
                resp = await upstream.client.request(request.method, url, headers=headers, data=body,
                                                     allow_redirects=False, timeout=upstream.timeout)
                current.set_attribute("http.response.status_code", resp.status)
            request.app[METRICS].upstream_answered(upstream.config.path, time.perf_counter() - started)
        except TimeoutError:
            raise UpstreamTimeout(f"The application at {upstream.config.path} did not answer in time.") from None
        except aiohttp.ClientError as exc:
            log.warning("upstream %s failed: %s", upstream.config.url, type(exc).__name__)
            raise UpstreamError(f"The application at {upstream.config.path} could not be reached.") from None
        try:
            return await relay(request, resp.status, resp.reason, self.headers.response_headers(resp.headers.items()),
                               resp.content, None, upstream.config.flush_interval, session=session)
        finally:
            if resp.content.at_eof():
                resp.release()          # the connection goes back to the pool
            else:
                resp.close()            # cut short (client gone, upstream broke): never reuse it

    async def _forward_lean(self, request: web.Request, upstream: Upstream, pool: Http1Pool,
                            session: Session | None, body_length: int | None = None) -> web.StreamResponse:
        """``forward`` through the lean client (``http1*.py``): the same exchange without aiohttp's
        ``ClientRequest``/``ClientResponse`` machinery, which was 29 % of a tiny proxied GET. With
        ``body_length``, the request's large body goes from socket to socket in the kernel."""
        resp = await self.lean_exchange(request, upstream, pool, session, body_length)
        try:
            return await relay(request, resp.status, resp.reason, self.headers.response_headers(resp.headers), resp,
                               resp, upstream.config.flush_interval, close=body_length is not None, session=session)
        finally:
            if resp.at_eof():
                resp.release()
            else:
                resp.close()

    async def lean_exchange(self, request: web.Request, upstream: Upstream, pool: Http1Pool, session: Session | None,
                            body_length: int | None = None) -> Http1Response:
        """Send the request through the lean client and wait for the response's head: the part of
        ``_forward_lean`` the express lane (``express.py``) shares. Raises UpstreamError/UpstreamTimeout."""
        target = upstream.base_path + upstream.request_target(normalized_path(request),
                                                              request.rel_url.raw_query_string)
        with span("upstream", client=True, **{"server.address": upstream.config.url}) as current:
            items = inject_items(self.headers.request_items(request, session, upstream.host_header,
                                                             upstream.identity))
            if request.method not in _BODILESS_METHODS and "Content-Length" not in request.headers:
                items.append(("Content-Length", "0"))      # as aiohttp's client does: some servers want it (411)
            head = serialize_head(request.method, target, items)
            started = time.perf_counter()
            try:
                if body_length is None:
                    resp = await pool.request(head, idempotent=request.method in IDEMPOTENT)
                else:
                    resp = await _send_spliced(request, pool, head, body_length)
            except Http1Timeout:
                raise UpstreamTimeout(f"The application at {upstream.config.path} did not answer in time.") from None
            except Http1Error as exc:
                log.warning("upstream %s failed: %s", upstream.config.url, exc)
                raise UpstreamError(f"The application at {upstream.config.path} could not be reached.") from None
            current.set_attribute("http.response.status_code", resp.status)
        request.app[METRICS].upstream_answered(upstream.config.path, time.perf_counter() - started)
        return resp


def is_lean(request: web.Request) -> bool:
    """Whether the lean client can carry this request: no body, no upgrade, no ``Expect``, not HEAD."""
    headers = request.headers
    return (not request.body_exists and request.method not in _NOT_LEAN_METHODS and "Expect" not in headers
            and "Upgrade" not in headers)


def splice_upload_length(request: web.Request) -> int | None:
    """The length of a request body large enough to be moved in the kernel (``splice.py``): a plain
    socket from the client, a ``Content-Length`` of at least SPLICE_MIN, nothing else framing it."""
    headers = request.headers
    length = headers.get("Content-Length", "")
    if not (splice.available() and length.isdigit() and int(length) >= splice.SPLICE_MIN):
        return None
    if "Transfer-Encoding" in headers or "Upgrade" in headers or request.method in _NOT_LEAN_METHODS:
        return None
    return int(length) if splice.socket_fd(request.transport) is not None else None


async def _send_spliced(request: web.Request, pool: Http1Pool, head: bytes, length: int) -> Http1Response:
    """Send the request with its body moved from the client's socket to the upstream's in the kernel.

    aiohttp stops reading the client's socket; the body bytes it had read already go first. Its parser
    never sees the body end, so the client's connection closes after this response (the response is
    still complete; RFC 9112 §9.6 lets a server close after any response) and the request's stream is
    ended here, else aiohttp would wait to read the rest of a body that is gone."""
    transport = request.transport
    source = splice.socket_fd(transport)
    assert transport is not None and source is not None      # splice_upload_length checked both
    content = request.content
    start = content.read_nowait()
    remaining = length - content.total_bytes
    content.feed_eof()                       # ends aiohttp's wait for the body, and resumes its reading:
    transport.pause_reading()                # so pause after it (what it read now would be discarded)
    request.protocol.close()
    try:
        return await pool.request_spliced(head, start, source, remaining)
    except splice.SourceBroke as exc:
        log.info("client request body broke off: %s", exc)
        raise BadRequest("The request body ended before its declared length.") from None


FORWARDER = web.AppKey("authproxy_forwarder", Forwarder)
