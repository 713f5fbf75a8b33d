"""The app's long-lived resources, each a ``cleanup_ctx`` generator: made at start-up, closed at shutdown.

- ``store_ctx``: the session store (the cookie store with its denylist in Redis or memory, or Redis)
  and the one way sessions end (``ending.SessionEnds``), told of ends by the fan-out;
- ``provider_ctx``: the HTTP client to the identity provider, the ``Provider`` and ``Refresher`` built
  on it, and the provider's metadata and JWKS loaded in the background until they are (``/ready`` waits);
- ``upstreams_ctx``: the clients to the apps behind us and the ``Forwarder`` that routes to them, with
  the one ``AssertionSigner`` that signs every upstream's identity assertions and serves ``/oauth2/jwks``.

``Lasting`` is what outlives one app: a reload (SIGHUP) builds a new app around the same one. The
order matters and is ``app.create_app``'s: the provider's refresher needs the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from .assertion import ASSERTIONS, AssertionSigner
from .context import CLOCK, CONFIG, PROVIDER, REFRESHER, SEALER
from .crypto import tls_context
from .ending import ENDS, FANOUT, SessionEnds
from .errors import ProviderError
from .identity import claim_paths
from .host import HostFanout, HostLink, HostRefreshes
from .metrics import METRICS, Metrics
from .provider import Provider
from .provider.client import provider_http
from .provider.keys import JWKS_RETRY_AFTER
from .redis_store import RedisDenylist, RedisStore
from .refresh import GRANT_CAP, Refresher
from .session import CODEC, STORE
from .store import CookieStore, MemoryDenylist, SessionStore
from .upstream import FORWARDER, STREAMS, Forwarder, Upstream, make_client
from .websocket import SOCKETS

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


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The session store — the cookie (with a denylist in Redis or memory), or Redis — and the one
    way sessions end (``SessionEnds``), told of ends by the fan-out and telling the socket registry."""
    config, clock = app[CONFIG], app[CLOCK]
    redis = config.session.redis
    local = app[LASTING].denylist
    assert local is not None
    store: SessionStore
    if config.session.store == "redis" and redis is not None:
        store = RedisStore(redis, config.cookie.name, config.cookie.expire, app[SEALER], clock,
                           idle_timeout=config.cookie.idle_timeout)
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
    await ends.close()
    await store.close()


async def provider_ctx(app: web.Application) -> AsyncIterator[None]:
    """The provider's HTTP client, and its metadata loaded in the background until it succeeds."""
    config = app[CONFIG]
    http = provider_http(tls_context(config.provider.ca_file) if config.provider.ca_file else None)
    app[PROVIDER] = provider = Provider(config.provider, config.redirect_uri, http, app[CLOCK], app[METRICS],
                                        kept_claims=claim_paths(config))
    link = app[LASTING].host                 # the Redis store shares refreshes itself (its lock)
    shared = link is not None and not isinstance(app[STORE], RedisStore)
    host = HostRefreshes(link, app[SEALER], GRANT_CAP + config.provider.timeout + 5) if shared and link else None
    app[REFRESHER] = Refresher(provider, config.cookie.refresh_before, app[CLOCK], app[METRICS], app[STORE], host)
    task = asyncio.create_task(load_metadata(provider))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await http.close()


async def load_metadata(provider: Provider) -> None:
    """Discovery until it succeeds, then the JWKS (when the provider has one) until it is read, each with a
    growing pause. Nothing but cancellation ends this task: a loader that died on an answer it did not
    expect would leave ``/ready`` at 503 until a restart."""
    await _until_loaded("provider metadata", provider.load_metadata, DISCOVERY_RETRY)
    log.info("provider metadata loaded from %s", provider.config.issuer or "explicit endpoints")
    metadata = provider.metadata
    if metadata is not None and metadata.jwks_uri:
        # No sooner than SigningKeys lets a read follow a failed one.
        await _until_loaded("JWKS", provider.jwks.warm, tuple(max(d, JWKS_RETRY_AFTER) for d in DISCOVERY_RETRY))
        log.info("provider JWKS loaded")


async def _until_loaded(what: str, load: Callable[[], Awaitable[object]], pauses: tuple[float, ...]) -> None:
    for attempt in range(10**9):
        try:
            await load()
            return
        except ProviderError as exc:
            log.warning("%s not loaded (attempt %d): %s", what, attempt + 1, exc)
        except Exception:   # a bug of ours or of a library: say so loudly, and keep trying
            log.exception("%s not loaded (attempt %d): unexpected error", what, attempt + 1)
        await asyncio.sleep(pauses[min(attempt, len(pauses) - 1)])


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    """A client per upstream (aiohttp's, and the lean HTTP/1.1 pool where it applies), closed with the app."""
    config = app[CONFIG]
    upstreams = [Upstream(u, make_client(u)) for u in config.upstreams]
    # One signer for every upstream's assertions and /oauth2/jwks: its keys derive from the cookie secrets.
    app[ASSERTIONS] = signer = AssertionSigner(config.cookie.keys, config.public_url, clock=app[CLOCK])
    app[FORWARDER] = Forwarder(config, upstreams, signer)
    yield
    await asyncio.gather(*(u.client.close() for u in upstreams), *(u.lean.close() for u in upstreams if u.lean))
