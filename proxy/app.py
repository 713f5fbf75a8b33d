"""Wiring: long-lived resources, the middleware order and the routes. No logic of its own.

The pieces live where their logic is: resources as ``cleanup_ctx`` generators in ``resources.py``,
errors → HTTP and the access log in ``boundary.py``, ``/ping`` and ``/ready`` in ``health.py``, the
gate in ``gate.py``, sign-in and sign-out in ``login.py``.

Order of a request: (``tracing.middleware``, with tracing on) → ``boundary.error_boundary`` (request id,
one access-log line, domain errors → HTTP) →
router → an ``/oauth2/*`` handler or ``handle_proxy`` → the session cookie is written by
``write_session_cookie`` as the response headers go out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from .assertion import handle_jwks
from .backchannel import handle_backchannel_logout
from .frontchannel import handle_frontchannel_logout
from .boundary import REQUEST_IDS, RequestIds, error_boundary, stamp_response
from .config import Config
from .context import CLOCK, CONFIG, SEALER
from .cookies import CookieCodec, private_when_setting_own
from .crypto import Sealer
from .ending import FANOUT, Fanout, Holds, LocalFanout
from .forward_auth import handle_auth
from .gate import handle_proxy, handle_userinfo
from .health import handle_ping, handle_ready
from .login import handle_callback, handle_sign_out, handle_signed_out, handle_start, trim_login_cookies
from .metrics import METRICS, handle_metrics
from .upstream import STREAMS, LiveStream
from .resources import LASTING, Lasting, provider_ctx, store_ctx, upstreams_ctx
from .session import CODEC, write_session_cookie
from .store import MemoryDenylist
from .websocket import setup_websockets
from . import tracing

__all__ = ["Lasting", "create_app"]     # Lasting (resources.py) is the type a caller passes to create_app

log = logging.getLogger("authproxy")

# The longest header field the server reads (aiohttp's default is 8190). Our own cookies must never
# make a request unreadable: a session of MAX_CHUNKS chunks (≈ 31 KB) plus login-state cookies piled
# up by concurrent sign-ins (≈ 450 bytes each; the next response clears all but the newest) must fit,
# so the request reaches the code that drops the oldest instead of ending in a 400.
MAX_FIELD_SIZE = 64 * 1024


def create_app(config: Config, *, clock: Callable[[], float] = time.time,
               lasting: Lasting | None = None, fanout: Fanout | None = None) -> web.Application:
    lasting = lasting or Lasting()
    ids = RequestIds()
    middlewares = [error_boundary(config, lasting.metrics, ids)]
    if config.tracing.enabled:                 # off: not even a middleware on the path
        middlewares.insert(0, tracing.middleware(config))
    app = web.Application(middlewares=middlewares, handler_args={"max_field_size": MAX_FIELD_SIZE})
    app[CONFIG] = config
    app[REQUEST_IDS] = ids
    app[CLOCK] = clock
    app[SEALER] = sealer = Sealer(config.cookie.keys)
    app[CODEC] = CookieCodec(config.cookie, sealer, clock)
    app[LASTING] = lasting
    lasting.denylist = lasting.denylist or MemoryDenylist(clock)
    app[FANOUT] = fanout or lasting.fanout or LocalFanout()     # a worker of ``workers: N``: the host's
    app[METRICS] = lasting.metrics
    if config.tracing.enabled:
        app.cleanup_ctx.append(tracing.tracing_ctx)       # first in, last out: flushed after the rest
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(provider_ctx)
    app.cleanup_ctx.append(upstreams_ctx)
    app.on_response_prepare.append(write_session_cookie)
    app.on_response_prepare.append(trim_login_cookies)
    app.on_response_prepare.append(private_when_setting_own(config.cookie.name))   # after all that set ours
    app.on_response_prepare.append(stamp_response)
    r = app.router
    r.add_get("/ping", handle_ping)         # liveness and readiness (health.py)
    r.add_get("/ready", handle_ready)
    r.add_get("/oauth2/start", handle_start)
    r.add_route("*", "/oauth2/callback", handle_callback)      # GET, or POST for response_mode form_post
    r.add_route("*", "/oauth2/sign_out", handle_sign_out)
    r.add_get("/oauth2/signed_out", handle_signed_out)
    r.add_get("/oauth2/userinfo", handle_userinfo)
    r.add_route("*", "/oauth2/auth", handle_auth)          # any method: Envoy sends the original one
    r.add_route("*", "/oauth2/auth/{tail:.*}", handle_auth)
    r.add_get("/oauth2/jwks", handle_jwks)     # the keys identity assertions are signed with (assertion.py)
    r.add_post("/oauth2/backchannel_logout", handle_backchannel_logout)
    if config.provider.frontchannel_logout:
        r.add_get("/oauth2/frontchannel_logout", handle_frontchannel_logout)
    if config.metrics_on_listen:
        r.add_get("/metrics", handle_metrics)
    elif config.metrics_listen is None:
        log.info("/metrics is not served: set metrics_listen (a port of its own) or metrics_on_listen: true")
    r.add_route("*", "/{tail:.*}", handle_proxy)
    setup_websockets(app)
    app[STREAMS] = Holds[LiveStream]("streamed response")
    return app
