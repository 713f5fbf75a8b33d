"""Wiring: long-lived resources, the middleware order and the routes. No logic of its own.

Order of a request: ``error_boundary`` (request id, one access-log line, domain errors → pages) →
router → an ``/oauth2/*`` handler or ``handle_proxy`` → the session cookie is written by
``write_session_cookie`` as the response headers go out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
from aiohttp import web

from .config import CALLBACK_PATH, Config
from .context import CLOCK, CONFIG, PROVIDER, REFRESHER, REQUEST_ID, SEALER
from .cookies import CookieCodec, private_when_setting_own
from .crypto import Sealer, random_token, tls_context
from .errors import AuthProxyError, LoginError, ProviderError, StateMismatch
from .metrics import METRICS, Metrics, handle_metrics
from .gate import handle_auth, handle_proxy, handle_userinfo
from .host import HostFanout, HostLink, HostRefreshes
from .login import (handle_callback, handle_sign_out, handle_signed_out, handle_start, is_navigation,
                    trim_login_cookies)
from .pages import NO_STORE, html_page, json_answer
from .redirects import safe_redirect
from .provider import Provider
from .refresh import Refresher
from .backchannel import handle_backchannel_logout
from .redis_store import RedisDenylist, RedisStore
from .ending import ENDS, FANOUT, Fanout, Holds, LocalFanout, SessionEnds
from .session import CODEC, SESSION_STATE, STORE, write_session_cookie
from .store import CookieStore, MemoryDenylist, SessionStore
from .relay import STREAMS, LiveStream
from .websocket import SOCKETS, setup_websockets
from .upstream import FORWARDER, UPSTREAM_LABEL, Forwarder, Upstream, make_client

log = logging.getLogger("authproxy")
access_log = logging.getLogger("authproxy.access")

# Delay between attempts to load the provider's metadata while it is unreachable at start-up.
DISCOVERY_RETRY = (0.5, 1.0, 2.0, 5.0, 10.0)
# A client's X-Request-Id is kept only if it looks like an id (no log injection through it).
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestIds:
    """Request ids: a random prefix per app (so per worker process, as each builds its own app) and a
    counter. Unique without asking the OS for randomness on every request: ``secrets.token_urlsafe``
    was 2 % of a tiny proxied GET. An id only names a request in logs; it guards nothing."""

    def __init__(self) -> None:
        self._prefix = random_token(6) + "-"
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():x}"


REQUEST_IDS = web.AppKey("authproxy_request_ids", RequestIds)


@dataclass
class Lasting:
    """What a process keeps across configurations: a reload (SIGHUP) builds a new app around it, so the
    metrics' counters keep counting and ended sessions (kept in memory when there is no Redis) stay
    ended."""

    metrics: Metrics = field(default_factory=Metrics)
    denylist: MemoryDenylist | None = None     # made by the first app
    host: HostLink | None = None               # the host coordinator, for a worker of ``workers: N``
    fanout: HostFanout | None = None           # session ends to and from the host's other workers


LASTING = web.AppKey("authproxy_lasting", Lasting)

# The longest header field the server reads (aiohttp's default is 8190). Our own cookies must never
# make a request unreadable: a session of MAX_CHUNKS chunks (≈ 31 KB) plus login-state cookies piled
# up by concurrent sign-ins (≈ 450 bytes each; the next response clears all but the newest) must fit,
# so the request reaches the code that drops the oldest instead of ending in a 400.
MAX_FIELD_SIZE = 64 * 1024


def create_app(config: Config, *, clock: Callable[[], float] = time.time,
               lasting: Lasting | None = None, fanout: Fanout | None = None) -> web.Application:
    app = web.Application(middlewares=[error_boundary], handler_args={"max_field_size": MAX_FIELD_SIZE})
    app[CONFIG] = config
    app[CLOCK] = clock
    app[SEALER] = sealer = Sealer(config.cookie.keys)
    app[CODEC] = CookieCodec(config.cookie, sealer, clock)
    app[LASTING] = lasting = lasting or Lasting()
    lasting.denylist = lasting.denylist or MemoryDenylist(clock)
    app[FANOUT] = fanout or lasting.fanout or LocalFanout()     # a worker of ``workers: N``: the host's
    app[METRICS] = lasting.metrics
    app[REQUEST_IDS] = RequestIds()
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_provider_ctx)
    app.cleanup_ctx.append(_upstreams_ctx)
    app.on_response_prepare.append(write_session_cookie)
    app.on_response_prepare.append(trim_login_cookies)
    app.on_response_prepare.append(private_when_setting_own(config.cookie.name))   # after all that set ours
    app.on_response_prepare.append(_stamp_response)
    r = app.router
    r.add_get("/ping", handle_ping)
    r.add_get("/ready", handle_ready)
    r.add_get("/oauth2/start", handle_start)
    r.add_get("/oauth2/callback", handle_callback)
    r.add_route("*", "/oauth2/sign_out", handle_sign_out)
    r.add_get("/oauth2/signed_out", handle_signed_out)
    r.add_get("/oauth2/userinfo", handle_userinfo)
    r.add_get("/oauth2/auth", handle_auth)
    r.add_post("/oauth2/backchannel_logout", handle_backchannel_logout)
    if config.metrics_on_listen:
        r.add_get("/metrics", handle_metrics)
    elif config.metrics_listen is None:
        log.info("/metrics is not served: set metrics_listen (a port of its own) or metrics_on_listen: true")
    r.add_route("*", "/{tail:.*}", handle_proxy)
    setup_websockets(app)
    app[STREAMS] = Holds[LiveStream]("streamed response")
    return app


# -- resources ---------------------------------------------------------------------------------


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The session store — the cookie (with a denylist in Redis or memory), or Redis — and the one
    way sessions end (``SessionEnds``), told of ends by the fan-out and telling the socket registry."""
    config, clock = app[CONFIG], app[CLOCK]
    redis = config.session.redis
    local = app[LASTING].denylist
    assert local is not None
    store: SessionStore
    if config.session.store == "redis" and redis is not None:
        store = RedisStore(redis, config.cookie.name, config.cookie.expire, app[SEALER], clock)
    else:
        denylist = RedisDenylist(redis, app[SEALER].blind, clock) if redis is not None else local
        store = CookieStore(app[CODEC], denylist)
    app[STORE] = store
    app[ENDS] = ends = SessionEnds(store, local, app[FANOUT], ttl=config.cookie.expire, clock=clock)
    ends.hold(app[SOCKETS].session_ended)
    ends.hold(app[STREAMS].session_ended)
    app[FANOUT].subscribe(ends.apply)
    yield
    app[FANOUT].unsubscribe(ends.apply)          # the fan-out outlives a reload; this app's registries do not
    await store.close()


async def _provider_ctx(app: web.Application) -> AsyncIterator[None]:
    """The provider's HTTP client, and its metadata loaded in the background until it succeeds."""
    config = app[CONFIG]
    ssl_ctx: ssl.SSLContext | bool = True
    if config.provider.ca_file:
        ssl_ctx = tls_context(config.provider.ca_file)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx), cookie_jar=aiohttp.DummyCookieJar())
    app[PROVIDER] = provider = Provider(config.provider, config.redirect_uri, http, app[CLOCK], app[METRICS])
    link = app[LASTING].host                 # the Redis store shares refreshes itself (its lock)
    shared = link is not None and not isinstance(app[STORE], RedisStore)
    host = HostRefreshes(link, app[SEALER], 2 * config.provider.timeout + 5) if shared and link else None
    app[REFRESHER] = Refresher(provider, config.cookie.refresh_before, app[CLOCK], app[METRICS], app[STORE], host)
    task = asyncio.create_task(_load_metadata(provider))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await http.close()


async def _load_metadata(provider: Provider) -> None:
    """Discovery until it succeeds, with a growing pause. Nothing but cancellation ends this task: a
    loader that died on an answer it did not expect would leave ``/ready`` at 503 until a restart."""
    for attempt in range(10**9):
        try:
            await provider.load_metadata()
            log.info("provider metadata loaded from %s", provider.config.issuer or "explicit endpoints")
            return
        except ProviderError as exc:
            log.warning("provider metadata not loaded (attempt %d): %s", attempt + 1, exc)
        except Exception:   # a bug of ours or of a library: say so loudly, and keep trying
            log.exception("provider metadata not loaded (attempt %d): unexpected error", attempt + 1)
        await asyncio.sleep(DISCOVERY_RETRY[min(attempt, len(DISCOVERY_RETRY) - 1)])


async def _upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    upstreams = [Upstream(u, make_client(u)) for u in app[CONFIG].upstreams]
    app[FORWARDER] = Forwarder(app[CONFIG], upstreams)
    yield
    await asyncio.gather(*(u.client.close() for u in upstreams), *(u.lean.close() for u in upstreams if u.lean))


# -- the error boundary and access log ----------------------------------------------------------


@web.middleware
async def error_boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id, log one line for it, and turn domain errors into pages."""
    incoming = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = incoming if incoming and _REQUEST_ID_OK.match(incoming) else request.app[REQUEST_IDS]()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except AuthProxyError as exc:
        status = exc.status
        if request.path == CALLBACK_PATH:
            request.app[METRICS].login_failed(getattr(exc, "code", type(exc).__name__), request[REQUEST_ID])
        log.warning("%s %s failed: %s (%s) rid=%s", request.method, request.path, type(exc).__name__, exc,
                    request[REQUEST_ID])
        return error_response(request, exc)
    except Exception:
        log.exception("unexpected error on %s %s rid=%s", request.method, request.path, request[REQUEST_ID])
        return error_response(request, AuthProxyError("An unexpected error happened in the proxy."))
    finally:
        elapsed = time.perf_counter() - started
        upstream = request.get(UPSTREAM_LABEL, "proxy")
        request.app[METRICS].answered(upstream, status, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            state = request.get(SESSION_STATE)
            session = state.peek() if state is not None else None
            user = session.identity.sub if session is not None else "-"
            access_log.info("%s %s %d %.1fms user=%s rid=%s", request.method, request.path, status, elapsed * 1000,
                            user, request[REQUEST_ID],
                            extra={"fields": {"event": "request", "request_id": request[REQUEST_ID],
                                              "client": request.remote, "user": user, "method": request.method,
                                              "path": request.path, "status": status, "upstream": upstream,
                                              "duration_ms": round(elapsed * 1000, 2)}})


def error_response(request: web.Request, exc: AuthProxyError) -> web.Response:
    rid = request[REQUEST_ID]
    if not is_navigation(request):
        return json_answer(exc.status, {"error": type(exc).__name__, "message": str(exc), "request_id": rid})
    # The retry link is checked like any redirect: a path such as //evil.example must not become one. A failed
    # callback is never retried as it was: its state is spent (a 403 at best) and its code must not sit in a link.
    at_callback = isinstance(exc, LoginError) or request.path == CALLBACK_PATH
    retry_to = "/" if at_callback else safe_redirect(request.raw_path, request.app[CONFIG])
    if at_callback or isinstance(exc, StateMismatch):
        actions = [("Sign in again", "/oauth2/start?rd=" + quote(retry_to, safe=""))]
    else:
        actions = [("Try again", retry_to)]
    return html_page(exc.status, exc.title, str(exc), rid, actions, templates_dir=request.app[CONFIG].templates_dir)


async def _stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries the request id; the proxy's own answers are never cached."""
    rid = request.get(REQUEST_ID)
    if rid and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid
    if request.path.startswith("/oauth2/"):
        response.headers.update(NO_STORE)


# -- handlers ---------------------------------------------------------------------------------


async def handle_ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", headers=NO_STORE)


async def handle_ready(request: web.Request) -> web.Response:
    """Ready once the provider's metadata is loaded and the session store answers."""
    if request.app[PROVIDER].metadata is None:
        return web.Response(status=503, text="provider metadata not loaded", headers=NO_STORE)
    if not await request.app[STORE].healthy():
        return web.Response(status=503, text="session store unreachable", headers=NO_STORE)
    return web.Response(text="OK", headers=NO_STORE)
