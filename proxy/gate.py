"""The gate every non-``/oauth2`` request passes: may it skip the check, who is it, may it go on?

In order, for each request (``handle_proxy``):

1. **Route** on the match key (``route_path``: the normalised path without segment parameters,
   ``paths.py``), never the query. A path ``paths.py`` refuses is a 400; a path under the proxy's own
   ``/oauth2/`` that no handler took is a 404 — never forwarded, so a front server's rule for
   ``/oauth2/`` can never be a way to the app.
2. **Pass without identity** a request that matches a ``skip_auth`` rule, or a CORS preflight from
   an allowed origin to one of ``cors.preflight_paths`` when ``cors.allow_preflight`` is on: it is
   forwarded with no session and no identity, Bearer or method-override header, whatever cookie or
   header the client sent.
3. **Authenticate**: a Bearer JWT when ``provider.accept_bearer_tokens`` is on and one is sent
   (``bearer.py``; a bad one is 401 ``invalid_token``, never a fallback to the cookie), else the
   session cookie, refreshed when due. Nobody: a browser navigation goes to the provider; anything
   else (fetch, XHR, API clients, and every path under ``api_paths``) gets a 401 with the login URL.
4. **Authorize** against the upstream's rules, or the global ones (``authz.py``). A signed-in user
   who does not match gets a 403 saying who they are signed in as, with a sign-out link — never a
   redirect, which would only bring them back here. A user who matches but signed in too weakly or too
   long ago for the rules' ``acr``/``max_auth_age`` is sent to sign in again asking for them (an API
   or Bearer client gets RFC 9470's 401; ``stepup.py``).
5. **Forward** (a WebSocket upgrade, or plain HTTP), only after all of the above.

Every refusal is raised as a domain error (``NotFound``, ``BearerRejected``, ``Unauthenticated``,
``Forbidden``, ``StepUpRequired``, ``BadQueryRules``) and answered by the boundary (``boundary.py``): this
module decides *whether* a request may go on, the boundary *how* a refusal reads. The proxy's own 401 and 403 carry
CORS headers for allowed origins, so a front end on another origin can read them and send its user to
``login_url``.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from .authz import Asked, authorize, is_preflight, rules_for, skips_auth
from .bearer import BEARER_SESSION, bearer_token, verify_bearer
from .config import AuthorizationConfig, Config
from .context import CLOCK, CONFIG, PROVIDER, REFRESHER, REQUEST_ID
from .ending import ENDS, Reason
from .errors import Forbidden, NotFound, SessionEnded, StepUpRequired, Unauthenticated
from .metrics import METRICS
from .pages import json_answer
from .session import STORE, Session, get_session, set_session
from .stepup import requirement, shortfall, sign_in_parameters
from .paths import is_own_path, request_key
from .upstream import FORWARDER
from .websocket import forward_websocket, is_websocket_upgrade


def route_path(request: web.Request) -> str:
    """The path routing and every access rule see: the normalised path (decoded once, ambiguous paths
    refused with BadRequest, encoded again, no query) without segment parameters (``paths.request_key``)."""
    return request_key(request)


async def authenticate(request: web.Request) -> Session | None:
    """The request's session with fresh tokens, or None (and the cookie cleared) if there is none.

    A refresh the provider refused, or an expiry with no way to refresh, ends the session (``SessionEnds``).
    """
    session = await get_session(request)
    if session is None:
        return None
    try:
        fresh = await request.app[REFRESHER].ensure_fresh(session)
    except SessionEnded:
        await _ended(request, session, Reason.REFRESH_REFUSED)
        return None
    if fresh is not session:
        set_session(request, fresh)
    elif session.access_expired(request.app[CLOCK]()):
        await _ended(request, session, Reason.EXPIRY)      # sign in again
        return None
    return await _seen(request, session, fresh)


async def _seen(request: web.Request, loaded: Session, fresh: Session) -> Session:
    """With ``cookie.idle_timeout``: record this use when the recorded one is ``touch_interval`` old
    (the store's ``seen``: a new cookie, or the Redis key's TTL slid), and never let a refresh result
    shared from another request carry an older last-seen time than this request's own cookie."""
    idle = request.app[CONFIG].cookie.idle_timeout
    if idle is None:
        return fresh
    now = request.app[CLOCK]()
    if fresh.last_active() < loaded.last_active():
        fresh = replace(fresh, last_seen=loaded.last_active())
        set_session(request, fresh)
    if not fresh.seen_due(idle, now):
        return fresh
    touched = await request.app[STORE].seen(fresh, now)
    if touched is None:                      # the store kept it (Redis): no cookie to write
        return fresh
    set_session(request, touched, touch_only=fresh is loaded)
    return touched


async def _ended(request: web.Request, session: Session, reason: Reason) -> None:
    """End ``session`` for ``reason``: the request goes on signed out (None)."""
    set_session(request, None)
    ends = request.app[ENDS]
    await ends.end(ends.new(reason, session_id=session.id))


async def identify(request: web.Request) -> Session | None:
    """Who sent this: the Bearer token's subject when those are accepted and one is sent, else the session.

    Raises BearerRejected for a bad token. The session from a token lives for this request only.
    """
    if request.app[CONFIG].provider.accept_bearer_tokens:
        token = bearer_token(request)
        if token is not None:
            return await verify_bearer(request.app[PROVIDER], token, now=request.app[CLOCK]())
    return await authenticate(request)


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    """Every request that is not the proxy's own: skip or authenticate, authorize, then forward upstream.

    A refusal is raised (``NotFound``, ``BearerRejected``, ``Unauthenticated``, ``Forbidden``) and the
    boundary (``boundary.py``) answers it: a redirect to sign in, a page or JSON."""
    config, forwarder = request.app[CONFIG], request.app[FORWARDER]
    path = route_path(request)
    if is_own_path(path):
        raise NotFound("This path belongs to the sign-in proxy and does not exist.")
    upstream = forwarder.route(path, host_name(request.host))
    session: Session | None = None
    if upstream is None or not (skips_auth(config, request, path) or is_preflight(config, request, path)):
        session = await identify(request)
        rules = rules_for(config, upstream.config) if upstream is not None else config.authorization
        if session is None:
            needed = requirement((rules,))      # sign in as the route asks at once, not twice
            raise Unauthenticated(path, parameters=sign_in_parameters(needed, _prompt(config)) if needed else None)
        if upstream is None:
            raise NotFound("No application is configured for this path.")
        asked = Asked(request.method, path, request.host.lower()) if rules.rules else None
        decision = authorize(session.identity, rules, asked)
        if not decision.allowed:
            request.app[METRICS].refused(session.identity.sub, f"{upstream.config.path}: {decision.reason}",
                                         request[REQUEST_ID])
            raise Forbidden(session.identity, path)
        step_up = step_up_needed(request, session, (rules,), path)
        if step_up is not None:
            raise step_up
    # Everything above is settled before anything reaches the app, WebSocket upgrades included.
    if is_websocket_upgrade(request):
        return await forward_websocket(request, upstream, session)
    return await forwarder.forward(request, upstream, session)


def step_up_needed(request: web.Request, session: Session, rule_sets: tuple[AuthorizationConfig, ...],
                   path: str | None) -> Forbidden | StepUpRequired | None:
    """The refusal for a session whose sign-in falls short of the rules' ``acr``/``max_auth_age``
    (``stepup.py``), or None if it meets them. Rule sets whose acr lists share no value: nobody can meet
    them, a 403 (sending the user to sign in could only loop)."""
    needed = requirement(rule_sets)
    if needed is None:
        return None
    config = request.app[CONFIG]
    if needed.acr == ():
        request.app[METRICS].refused(session.identity.sub, "acr: the rules' acr lists have no value in common",
                                     request[REQUEST_ID])
        return Forbidden(session.identity, path)
    reason = shortfall(session, needed, request.app[CLOCK](), config.provider.clock_skew)
    if reason is None:
        return None
    return StepUpRequired(sign_in_parameters(needed, _prompt(config)), reason, path=path,
                          bearer=session.id == BEARER_SESSION)


def _prompt(config: Config) -> str | None:
    return config.provider.extra_authorize_params.get("prompt")


def host_name(host: str) -> str:
    """A ``Host`` value as upstreams' ``host`` is written: lowercased, without the port."""
    host = host.lower()
    return host if host.endswith("]") else host.rpartition(":")[0] if ":" in host else host


async def handle_userinfo(request: web.Request) -> web.Response:
    """The signed-in user as JSON, for the app's own front end."""
    session = await identify(request)
    if session is None:
        raise Unauthenticated()
    ident = session.identity
    return json_answer(200, {"user": ident.sub, "email": ident.email, "preferred_username": ident.preferred_username,
                             "name": ident.name, "groups": list(ident.groups)})
