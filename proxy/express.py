"""The express lane: a signed-in ``GET`` served without aiohttp's request, router, middleware and response.

Why: a tiny proxied GET cost about 135 µs of CPU through aiohttp's server (its request object and URL,
the router, the middleware chain, ``StreamResponse`` and its writer, a task per request), as much as
Apache + mod_auth_openidc spends; a bare relay written on ``httptools`` with the same four system calls
cost 19 µs on the same machine (``bench/bare_relay.py``, 2026-12-06). Most requests a proxy sees are the same
boring thing: a browser or API client with a valid session asking for a page. This module serves those
from the bytes of their head, and everything else exactly as before.

How a request goes (``LimitedHandler.data_received`` hands it here first):

1. ``ExpressLane.take`` (no I/O, no side effect), offered a read only while aiohttp's parser holds no byte
   of this connection (``LimitedHandler._quiet``): the read holds exactly one whole head and nothing else;
   it parses (``httptools``, llhttp as aiohttp's own parser) as an HTTP/1.1 ``GET`` with no body, framing,
   upgrade, ``Expect`` or ``Connection`` option, ASCII only, nothing aiohttp's parser would refuse on top
   of llhttp (a repeated singleton field such as ``Host``, a line or a field count beyond its limits), an
   origin-form path with no ``%``, dot segment or backslash (so aiohttp's router could only have sent it
   to the gate), and not one of the proxy's own paths; an upstream with the lean client takes it; no
   ``skip_auth`` rule, step-up, Bearer token or tracing is involved. Anything else: declined.
2. ``_serve`` (a task): the session from the cookie (the store's cache; loaded without a word, so the gate
   logs a bad cookie once), no login cookie to trim, fresh (no refresh or idle touch due), authorised.
   Anything else: declined, still with nothing sent.
3. From here on the request is the lane's: it goes upstream through the lean client
   (``Forwarder.lean_exchange``, the same head as the gate's path builds), and an answer whose body came
   with its head is written in one ``write``. A streamed answer, and every error page, are the usual
   aiohttp ``relay``/boundary code on a request object made for the occasion (``_promoted``).

A declined request goes to aiohttp with every byte as it came (``LimitedHandler.express_declined``), so
whatever aiohttp and the gate would answer — a sign-in redirect, a 400, a 404 — is answered by them.
What the boundary does for every request is done here too: the request id (the client's when it looks
like one), the access-log line, the metrics, 499 when the client goes away, ``X-Request-Id`` on the
answer; ``Date``, ``Server`` and ``Content-Type`` where aiohttp's ``Response`` adds them, in its order;
streams held for a session's end; a shutdown waits for the request (one declined after a shutdown began
is served by the app's handlers directly: aiohttp's parser takes no more bytes then).

``limits.express: false`` turns the lane off (every request through aiohttp), to compare or to rule it out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .authz import Asked, authorize, rules_for, skips_auth
from .boundary import CLIENT_CLOSED_REQUEST, REQUEST_IDS, RequestIds, error_response, failure, request_id
from .context import CLOCK, CONFIG, REFRESHER, REQUEST_ID
from .cookies import own_cookies
from .errors import AuthProxyError, BadRequest
from .gate import host_name
from .logs import ACCESS_LOG
from .metrics import METRICS
from .paths import MATCH_KEY, NORMALISED_PATH, is_own_path, request_key
from .session import SESSION_STATE, STORE, SessionState
from .stepup import requirement
from .upstream import FORWARDER, UPSTREAM_LABEL
from .upstream.http1 import Http1Response
from .upstream.relay import check_head, relay

if TYPE_CHECKING:
    from .connections import LimitedHandler
    from .model import Session
    from .upstream.forward import Upstream

log = logging.getLogger("authproxy")

# Request fields that take a request off the lane: framing and upgrades (aiohttp's parser and the gate
# decide those), and the proxy's own answers that depend on them.
_DECLINED_FIELDS = frozenset({"content-length", "transfer-encoding", "upgrade", "expect", "te", "http2-settings",
                              "proxy-connection", "sec-websocket-key1"})      # the last: aiohttp's parser's 400
# Fields aiohttp's parser refuses to see twice (a 400): the lane declines a request that repeats one.
_SINGLETONS = frozenset(name.lower() for name in SINGLETON_HEADERS)
# Paths aiohttp's router gives to a handler of its own (health.py, metrics); /oauth2… is checked by prefix.
_OWN_ROUTES = frozenset({"/ping", "/ready", "/metrics"})
_HEAD_END = b"\r\n\r\n"
# Cookie headers whose parse is kept (``ExpressLane._cookies``).
COOKIE_CACHE = 128
# Longer Cookie headers are parsed each time, not kept (128 of them at most 4 MiB).
COOKIE_CACHE_LONGEST = 32 * 1024
# A head's fields as parsed, read-only and shared (``_Fields``): its fields as sent, a multidict, the Host.
_Fields = tuple[tuple[tuple[str, str], ...], CIMultiDictProxy[str], str]
# A head as ``take`` parsed it: raw path, path, query, fields as sent, headers, Host, normalised path, match key.
_Parsed = tuple[str, str, str, tuple[tuple[str, str], ...], CIMultiDictProxy[str], str, str, str]
# What a connection keeps of the last head the lane took (``LimitedHandler.express_last``): the lane, the
# head's bytes, its parse and its upstream.
Taken = tuple["ExpressLane", bytes, _Parsed, "Upstream"]
# Blocks of fields whose parse is kept (``ExpressLane._blocks``), and the longest kept. A block is kept with its
# fields as strings and as a multidict, about 4x its text: 128 of <= 4 KiB, at most about 2 MiB. The cache
# fills before any session is checked, so anyone can churn it; it is cleared when full, which bounds it.
FIELDS_CACHE = 128
FIELDS_CACHE_LONGEST = 4 * 1024
# (path, Host) pairs whose route is kept, and the longest kept (256 of them at most 256 KiB).
ROUTE_CACHE = 256
ROUTE_CACHE_LONGEST = 1024
_AMBIGUOUS_PATH = re.compile(r"%|\\|/\.\.?(?:/|$)")


class _Head:
    """What httptools reports of the request it parses: one message begun, and ended (no other callback:
    the fields are cut out of the text once llhttp has found it well formed)."""

    __slots__ = ("complete", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.complete = False

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_message_complete(self) -> None:
        self.complete = True


class ExpressRequest(dict[Any, Any]):
    """The slice of ``web.Request`` the gate's helpers, the header policy and the boundary's error pages
    read, made from the parsed head: no URL object, no payload, no writer. It is the request's state
    (``request[KEY]``) itself, a dict. Passed to those helpers as a ``web.Request`` (``as_request``);
    ``_promoted`` makes a real one when aiohttp must write the answer."""

    __slots__ = ("app", "fields", "headers", "host", "method", "path", "query_string", "raw_path", "remote",
                 "transport")

    def __init__(self, app: web.Application, raw_path: str, path: str, query: str, fields: tuple[tuple[str, str], ...],
                 headers: CIMultiDictProxy[str], host: str, remote: str | None,
                 transport: asyncio.Transport | None) -> None:
        super().__init__()
        self.app = app
        self.method = "GET"
        self.raw_path = raw_path
        self.path = path
        self.query_string = query
        self.fields = fields
        self.headers = headers             # shared by every request with the same fields: read-only
        self.host = host
        self.remote = remote
        self.transport = transport

    @property
    def rel_url(self) -> ExpressRequest:
        return self            # for ``rel_url.raw_query_string``

    @property
    def raw_query_string(self) -> str:
        return self.query_string

    def as_request(self) -> web.Request:
        """This view, typed as what the helpers it is passed to were written for (they read only its slice)."""
        return cast(web.Request, self)


class _Promoted(web.BaseRequest):
    """A real aiohttp request for an express request whose answer aiohttp writes (``relay``, error pages)."""

    ATTRS = web.BaseRequest.ATTRS | frozenset({"app"})
    app: web.Application

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """What the app's ``on_response_prepare`` hooks do to a lane request's answer: only
        ``boundary.stamp_response``'s request id (the lane declined every request whose cookies change,
        and no ``/oauth2/`` path reaches it), at the same point of ``prepare``."""
        if "X-Request-Id" not in response.headers:
            response.headers["X-Request-Id"] = self[REQUEST_ID]


class ExpressLane:
    """The lane for one app (one worker's): what ``take`` checks is read from its config once."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        config = self.config = app[CONFIG]
        self.forwarder = app[FORWARDER]
        self.store = app[STORE]
        self.refresher = app[REFRESHER]
        self.metrics = app[METRICS]
        self.clock: Callable[[], float] = app[CLOCK]
        self.max_head = config.limits.max_header_size
        self.cookie_name = config.cookie.name
        self.bearer = config.provider.accept_bearer_tokens
        self.idle_timeout = config.cookie.idle_timeout
        self.metrics_route = config.metrics_on_listen
        self.ids = app.get(REQUEST_IDS) or RequestIds()      # the boundary's: one id prefix per worker
        self.served = 0                  # requests answered here (the rest were declined), for tests and bench
        self._head = _Head()
        self._parser = httptools.HttpRequestParser(self._head)
        # The proxy's cookies and their names per Cookie header seen (a browser sends the same one for a
        # while): parsed once, not on every request. Bounded; cleared when full.
        self._cookies: dict[str, tuple[list[str], Mapping[str, str], bool]] = {}
        self.login_prefix = config.cookie.name + "_login_"       # login.py's login cookies
        # Where each (path, Host) goes (``_route``): the same few paths come again and again. Bounded; cleared
        # when full.
        self._routes: dict[tuple[str, str], tuple[str, str, Upstream] | tuple[()]] = {}
        self._blocks: dict[str, _Fields | tuple[()]] = {}

    @classmethod
    def for_app(cls, app: web.Application) -> ExpressLane | None:
        """The lane for ``app``, or None where it would never take a request (off, tracing on, no skip-free
        config) — then nothing on the server path changes at all."""
        config = app.get(CONFIG)
        if config is None or not config.limits.express or config.tracing.enabled or FORWARDER not in app:
            return None
        if not any(u.lean is not None and u.config.flush_interval == 0 for u in app[FORWARDER].upstreams):
            return None
        return cls(app)

    # -- 1. the head ------------------------------------------------------------------------------------

    def take(self, handler: LimitedHandler, data: bytes) -> bool:
        """Start serving ``data`` (one read) on the lane if it is a request the lane serves; False: aiohttp's."""
        again = handler.express_last
        if again is not None and again[1] == data and again[0] is self:
            # The same bytes as this connection's last head, which this lane took: llhttp and every check
            # below would find what they found then (each depends on the bytes, this lane's config and the
            # connection's limits only), so that parse is used again.
            handler.express_started(self._serve(handler, self._again(handler, again[2]), again[3], data))
            return True
        # One whole head and nothing after it: it ends the read, and llhttp counts one message in it.
        if not data.startswith(b"GET /") or not data.endswith(_HEAD_END) or len(data) > self.max_head \
                or not data.isascii():
            return False
        head = self._head
        head.messages, head.complete = 0, False
        parser = self._parser
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            head.complete = False
        taken = None
        if head.complete and head.messages == 1 and parser.get_http_version() == "1.1":
            taken = self._request(handler, data.decode("ascii"))
        if taken is None:
            # The one parser is shared by every connection of this worker (``take`` never awaits): one left
            # mid-message (a body announced, a parse error) or after a head that ends its connection (llhttp
            # refuses what follows ``Connection: close``) must not read the next connection's head.
            self._parser = httptools.HttpRequestParser(head)
            return False
        request, upstream = taken
        # Kept until the next head, or until the connection is parked (``LimitedHandler.shed_parser``): an idle
        # connection does not hold its last head.
        handler.express_last = (self, data, (request.raw_path, request.path, request.query_string, request.fields,
                                             request.headers, request.host, request[NORMALISED_PATH],
                                             request[MATCH_KEY]), upstream)
        handler.express_started(self._serve(handler, request, upstream, data))
        return True

    def _again(self, handler: LimitedHandler, parsed: _Parsed) -> ExpressRequest:
        """A request view of a head parsed before (``take``), with state of its own."""
        url, path, query, fields, headers, host, normalised, key = parsed
        request = ExpressRequest(self.app, url, path, query, fields, headers, host, handler.peer, handler.transport)
        request[NORMALISED_PATH] = normalised
        request[MATCH_KEY] = key
        return request

    def _request(self, handler: LimitedHandler, text: str) -> tuple[ExpressRequest, Upstream] | None:
        """The request view and its upstream, if everything the head says keeps it on the lane. llhttp
        found the head well formed; its lines are cut out of the text here (a callback per field cost more)."""
        line_end = text.find("\n")                # llhttp has checked that every line ends with CRLF
        parts = text[:line_end - 1].split(" ")
        # aiohttp's own limit on the request line (its 400), on top of llhttp's.
        if len(parts) != 3 or line_end > handler.max_line_size:
            return None
        block = text[line_end + 1:-4]
        known = self._blocks.get(block)
        if known is None:
            known = self._fields(handler, block)
            if len(block) <= FIELDS_CACHE_LONGEST:
                if len(self._blocks) >= FIELDS_CACHE:
                    self._blocks.clear()
                self._blocks[block] = known
        if not known:
            return None
        fields, headers, host = known
        url = parts[1]
        path, _, query = url.partition("?")
        if "#" in url or _AMBIGUOUS_PATH.search(path) or path in _OWN_ROUTES or path.startswith("/oauth2"):
            return None
        request = ExpressRequest(self.app, url, path, query, fields, headers, host, handler.peer, handler.transport)
        route = self._routes.get((path, host))
        if route is None:
            route = self._route(request, path, host)
            if len(path) + len(host) <= ROUTE_CACHE_LONGEST:
                if len(self._routes) >= ROUTE_CACHE:
                    self._routes.clear()
                self._routes[path, host] = route
        if not route:
            return None
        request[NORMALISED_PATH], request[MATCH_KEY], upstream = route
        return request, upstream

    def _fields(self, handler: LimitedHandler, block: str) -> _Fields | tuple[()]:
        """A head's fields (everything after the request line) if they keep the request on the lane: as
        sent, as a multidict, and the Host; else ``()``. Nothing but the fields and this server's limits
        decide it, so ``_blocks`` keeps the answer per block of fields: a client sends the same ones again
        and again (its cookie, its user agent), and this loop was the lane's largest piece of Python."""
        lines = block.split("\n")                 # each line but the last ends with its CR
        if len(lines) > handler.max_headers:        # aiohttp's limits on top of llhttp's (its 400s)
            return ()
        max_field = handler.max_field_size
        fields: list[tuple[str, str]] = []
        host: str | None = None
        cookies = 0
        seen: set[str] = set()
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or line[0] in " \t" or len(line) > max_field:       # obs-fold: aiohttp's to refuse
                return ()
            value = value.strip(" \t\r")
            lower = name.lower()
            if lower in _DECLINED_FIELDS:
                return ()
            if lower in _SINGLETONS:
                if lower in seen:
                    return ()
                seen.add(lower)
            if lower == "host":
                host = value
            elif lower == "connection":
                if value.lower() != "keep-alive":
                    return ()
            elif lower == "cookie":
                cookies += 1
            elif lower == "authorization" and self.bearer:
                return ()
            fields.append((name, value))
        if not host or cookies > 1:
            return ()
        return tuple(fields), CIMultiDictProxy(CIMultiDict(fields)), host

    def _route(self, request: ExpressRequest, path: str, host: str) -> tuple[str, str, Upstream] | tuple[()]:
        """Where a ``GET`` of ``path`` on ``host`` goes if the lane may take it: its normalised path, match key and
        upstream; or ``()``. Nothing else of the request counts (``_request`` refused the rest), so ``_routes``
        keeps the answer per path and Host: it was 3.5 % of a tiny GET's time."""
        view = request.as_request()
        try:
            key = request_key(view)
        except BadRequest:
            return ()
        if is_own_path(key) or skips_auth(self.config, view, key):
            return ()
        upstream = self.forwarder.route(key, host_name(host))
        if upstream is None or upstream.lean is None or upstream.config.flush_interval:
            return ()
        rules = rules_for(self.config, upstream.config)
        if requirement((rules,)) is not None:        # step-up: stepup.py's, with its redirects
            return ()
        return request[NORMALISED_PATH], key, upstream

    # -- 2. the session, 3. the exchange ----------------------------------------------------------------

    async def _serve(self, handler: LimitedHandler, request: ExpressRequest, upstream: Upstream, data: bytes) -> None:
        view = request.as_request()
        started = time.perf_counter()
        try:
            session = await self._session(view, request, upstream)
        except asyncio.CancelledError:            # the client left while its session loaded (Redis): the 499
            self._log(request, "proxy", None, CLIENT_CLOSED_REQUEST, time.perf_counter() - started)
            raise
        if session is None:
            if handler.closing:
                await self._serve_on_aiohttp(handler, request)
            else:
                handler.express_declined(data)
            return
        self.served += 1
        rid = request[REQUEST_ID] = request_id(request.headers.get("X-Request-Id", ""), self.ids)
        request[UPSTREAM_LABEL] = upstream.config.path
        status, keep_alive = 500, False
        try:
            status, keep_alive = await self._exchange(handler, request, upstream, session, rid)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_REQUEST
            raise
        except Exception:                         # a bug: the connection is closed, whatever went out
            log.exception("unexpected error on GET %s rid=%s", request.path, rid)
        finally:
            self._log(request, upstream.config.path, session, status, time.perf_counter() - started)
            handler.express_done(keep_alive)

    async def _serve_on_aiohttp(self, handler: LimitedHandler, request: ExpressRequest) -> None:
        """A request declined after a shutdown or reload began: aiohttp's parser takes no more bytes then,
        so the app's handler chain (boundary, router, gate) serves it here as aiohttp's ``_handle_request``
        would have, had it read the request; then the connection closes."""
        try:
            factory, handle = handler._request_factory, handler._request_handler
            if factory is None or handle is None or handler.transport is None:
                return
            loop = asyncio.get_running_loop()
            web_request = factory(self._message(request), EMPTY_PAYLOAD, handler, StreamWriter(handler, loop),
                                  cast(asyncio.Task[None], asyncio.current_task()))
            response = await handle(web_request)
            await response.prepare(web_request)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unexpected error on GET %s during shutdown", request.path)
        finally:
            handler.express_done(False)

    async def _session(self, view: web.Request, request: ExpressRequest, upstream: Upstream) -> Session | None:
        """The request's session if the gate would let it through as it is, with nothing to write back."""
        raw = request.headers.get("Cookie")
        if raw is None or self.cookie_name not in raw:       # no cookie of ours: the gate's sign-in
            return None
        known = self._cookies.get(raw)
        if known is None:
            cookies = own_cookies(view, self.cookie_name)
            # Login cookies to trim go to aiohttp's path (login.trim_login_cookies); so does a repeated one.
            usable = self.login_prefix not in raw
            known = (self.store.owned_names(cookies), cookies, usable)
            if len(raw) <= COOKIE_CACHE_LONGEST:
                if len(self._cookies) >= COOKIE_CACHE:
                    self._cookies.clear()
                self._cookies[raw] = known
        names, cookies, usable = known
        if not usable:
            return None
        if not names:
            return None
        try:
            session = await self.store.load(cookies)
        except AuthProxyError:     # a bad or ended cookie, the store down: the gate's, which logs it once
            return None
        if session is None:
            return None
        request[SESSION_STATE] = SessionState.loaded_with(list(names), cookies, session)
        now = self.clock()
        if self.refresher.due(session, now) or session.access_expired(now) or session.seen_due(self.idle_timeout, now):
            return None
        rules = rules_for(self.config, upstream.config)
        asked = Asked("GET", request_key(view), view.host.lower()) if rules.rules else None
        if not authorize(session.identity, rules, asked).allowed:
            return None                           # the gate's 403, with its metrics and page
        return session

    async def _exchange(self, handler: LimitedHandler, request: ExpressRequest, upstream: Upstream,
                        session: Session, rid: str) -> tuple[int, bool]:
        """Send the request upstream and its answer to the client: (status, keep the connection)."""
        view = request.as_request()
        pool = upstream.lean
        assert pool is not None
        try:
            resp = await self.forwarder.lean_exchange(view, upstream, pool, session)
        except AuthProxyError as exc:
            return await self._answer(handler, request, failure(self._promoted(handler, request), exc, self.config,
                                                                 self.metrics))
        except Exception:
            log.exception("unexpected error on GET %s rid=%s", request.path, rid)
            return await self._error(handler, request)
        try:
            headers = self.forwarder.headers.response_headers(resp.headers)
            try:
                check_head(resp.status, resp.reason, headers, resp)
            except AuthProxyError as exc:
                return await self._answer(handler, request, failure(self._promoted(handler, request), exc,
                                                                     self.config, self.metrics))
            if resp.status not in (204, 304) and "Content-Length" in headers:
                body = resp.complete_body()
                if body is not None:
                    return self._write_whole(handler, resp, headers, body, rid), True
            promoted = self._promoted(handler, request)
            try:
                out = await relay(promoted, resp.status, resp.reason, headers, resp, resp,
                                  upstream.config.flush_interval, session=session)
            except AuthProxyError as exc:
                return await self._answer(handler, request, failure(promoted, exc, self.config, self.metrics))
            return out.status, bool(out.keep_alive)
        finally:
            if resp.at_eof():
                resp.release()
            else:
                resp.close()

    def _write_whole(self, handler: LimitedHandler, resp: Http1Response, headers: CIMultiDict[str], body: bytes,
                     rid: str) -> int:
        """An answer whose body came with its head: one write, with the fields aiohttp's ``Response`` would
        write, in its order: the body's ``Content-Length`` (and ``Content-Type`` for a body without one), then
        ``Date``, ``Server`` and ``X-Request-Id`` where missing."""
        del headers["Content-Length"]
        headers["Content-Length"] = str(len(body))
        if body and "Content-Type" not in headers:          # as aiohttp's Response: never left to sniffing
            headers["Content-Type"] = "application/octet-stream"
        if "Date" not in headers:
            headers["Date"] = rfc822_formatted_time()
        if "Server" not in headers:
            headers["Server"] = SERVER_SOFTWARE
        if "X-Request-Id" not in headers:
            headers["X-Request-Id"] = rid
        status_line = f"HTTP/1.1 {resp.status} {resp.reason}"
        transport = handler.transport
        if transport is not None:
            transport.write(_serialize_headers(status_line, headers) + body)
        return resp.status

    async def _answer(self, handler: LimitedHandler, request: ExpressRequest, response: web.StreamResponse
                      ) -> tuple[int, bool]:
        """Write an answer the boundary built (an error page) through aiohttp, as any other would be."""
        promoted = self._promoted(handler, request)
        await response.prepare(promoted)
        await response.write_eof()
        return response.status, bool(response.keep_alive)

    async def _error(self, handler: LimitedHandler, request: ExpressRequest) -> tuple[int, bool]:
        problem = AuthProxyError("An unexpected error happened in the proxy.")
        return await self._answer(handler, request, error_response(request.as_request(), problem, self.config))

    def _promoted(self, handler: LimitedHandler, request: ExpressRequest) -> web.Request:
        """A real aiohttp request for ``request`` (made once), for code that writes through aiohttp."""
        promoted = request.get(_PROMOTED)
        if promoted is None:
            loop = asyncio.get_running_loop()
            promoted = _Promoted(self._message(request), EMPTY_PAYLOAD, handler, StreamWriter(handler, loop),
                                 cast(asyncio.Task[None], asyncio.current_task()), loop, state=request)
            promoted.app = self.app
            request[_PROMOTED] = promoted
        return cast(web.Request, promoted)

    @staticmethod
    def _message(request: ExpressRequest) -> RawRequestMessage:
        """aiohttp's parsed head for ``request``, as its parser would have made it."""
        raw = tuple((name.encode(), value.encode()) for name, value in request.fields)
        return RawRequestMessage("GET", request.raw_path, HttpVersion11, request.headers, raw, False, None, False,
                                 False, URL.build(path=request.path, query_string=request.query_string, encoded=True))

    def _log(self, request: ExpressRequest, label: str, session: Session | None, status: int, elapsed: float) -> None:
        """The boundary's accounting (``boundary._log_access``) for a request the lane served."""
        self.metrics.answered(label, status, elapsed)
        writer = ACCESS_LOG.writer                  # serving: the batched writer (logs.py), called directly
        if writer is not None:
            writer.request("GET", request.path, status, elapsed, session.identity.sub if session else "-",
                           request.get(REQUEST_ID) or "-", request.remote, label, "", None, None)
        elif ACCESS_LOG.isEnabledFor(logging.INFO):
            ACCESS_LOG.request("GET", request.path, status, elapsed, session.identity.sub if session else "-",
                               request.get(REQUEST_ID) or "-", request.remote, label, "", {}, None)


_PROMOTED = web.RequestKey("authproxy_express_promoted", web.BaseRequest)
