"""Wiring: long-lived resources, the middleware order and the routes. No logic of its own.

Order of a request: ``boundary.error_boundary`` (request id, one access-log line, domain errors → HTTP) →
router → an ``/oauth2/*`` handler or ``handle_proxy`` → the session cookie is written by
``write_session_cookie`` as the response headers go out.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .backchannel import handle_backchannel_logout
from .boundary import error_boundary, stamp_response
from .config import Config
from .context import CLOCK, CONFIG, PROVIDER, REFRESHER, SEALER
from .cookies import CookieCodec, private_when_setting_own
from .crypto import Sealer, tls_context
from .ending import ENDS, FANOUT, Fanout, Holds, LocalFanout, SessionEnds
from .errors import ProviderError
from .gate import handle_auth, handle_proxy, handle_userinfo
from .host import HostFanout, HostLink, HostRefreshes
from .login import handle_callback, handle_sign_out, handle_signed_out, handle_start, trim_login_cookies
from .metrics import METRICS, Metrics, handle_metrics
from .pages import NO_STORE
from .provider import Provider
from .redis_store import RedisDenylist, RedisStore
from .refresh import Refresher
from .relay import STREAMS, LiveStream
from .session import CODEC, STORE, write_session_cookie
from .store import CookieStore, MemoryDenylist, SessionStore
from .upstream import FORWARDER, Forwarder, Upstream, make_client
from .websocket import SOCKETS, setup_websockets

log = logging.getLogger("authproxy")

# Delay between attempts to load the provider's metadata while it is unreachable at start-up.
DISCOVERY_RETRY = (0.5, 1.0, 2.0, 5.0, 10.0)


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
    lasting = lasting or Lasting()
    app = web.Application(middlewares=[error_boundary(config, lasting.metrics)],
                          handler_args={"max_field_size": MAX_FIELD_SIZE})
    app[CONFIG] = config
    app[CLOCK] = clock
    app[SEALER] = sealer = Sealer(config.cookie.keys)
    app[CODEC] = CookieCodec(config.cookie, sealer, clock)
    app[LASTING] = lasting
    lasting.denylist = lasting.denylist or MemoryDenylist(clock)
    app[FANOUT] = fanout or lasting.fanout or LocalFanout()     # a worker of ``workers: N``: the host's
    app[METRICS] = lasting.metrics
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_provider_ctx)
    app.cleanup_ctx.append(_upstreams_ctx)
    app.on_response_prepare.append(write_session_cookie)
    app.on_response_prepare.append(trim_login_cookies)
    app.on_response_prepare.append(private_when_setting_own(config.cookie.name))   # after all that set ours
    app.on_response_prepare.append(stamp_response)
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
