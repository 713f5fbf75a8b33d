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
   redirect, which would only bring them back here.
5. **Forward** (a WebSocket upgrade, or plain HTTP), only after all of the above.

The proxy's own 401 and 403 carry CORS headers for allowed origins, so a front end on another origin
can read them and send its user to ``login_url``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web

from .authz import (authorize, authorize_all, cors_headers, is_api_path, is_preflight, query_rules,
                    rules_for, skips_auth)
from .errors import BadQueryRules, BearerRejected, SessionEnded
from .bearer import bearer_token, invalid_token_header, verify_bearer
from .context import CLOCK, CONFIG, PROVIDER, REFRESHER, REQUEST_ID
from .ending import ENDS, Reason
from .headers import identity_headers
from .login import is_navigation, login_url, start_login
from .metrics import METRICS
from .pages import NO_STORE, html_page, json_answer
from .session import Session, get_session, set_session
from .paths import is_own_path, request_key
from .upstream import FORWARDER
from .websocket import forward_websocket, is_websocket_upgrade

log = logging.getLogger("authproxy.gate")

SIGN_OUT_PATH = "/oauth2/sign_out"


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
    return fresh


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
    """Every request that is not the proxy's own: skip or authenticate, authorize, then forward upstream."""
    config, forwarder = request.app[CONFIG], request.app[FORWARDER]
    path = route_path(request)
    if is_own_path(path):
        return not_found(request, "This path belongs to the sign-in proxy and does not exist.")
    upstream = forwarder.route(path)
    session: Session | None = None
    if upstream is None or not (skips_auth(config, request, path) or is_preflight(config, request, path)):
        try:
            session = await identify(request)
        except BearerRejected as exc:
            return invalid_token(request, exc)
        if session is None:
            return await unauthenticated(request, path)
        if upstream is None:
            return not_found(request, "No application is configured for this path.")
        decision = authorize(session.identity, rules_for(config, upstream.config))
        if not decision.allowed:
            request.app[METRICS].refused(session.identity.sub, f"{upstream.config.path}: {decision.reason}",
                                         request[REQUEST_ID])
            return forbidden(request, path, session)
    # Everything above is settled before anything reaches the app, WebSocket upgrades included.
    if is_websocket_upgrade(request):
        return await forward_websocket(request, upstream, session)
    return await forwarder.forward(request, upstream, session)


def not_found(request: web.Request, message: str) -> web.Response:
    """404 from the proxy itself: nothing is forwarded."""
    return html_page(404, "Not found", message, request[REQUEST_ID], actions=[("Go to the start page", "/")],
                     templates_dir=request.app[CONFIG].templates_dir)


def wants_json(request: web.Request, path: str) -> bool:
    """API clients, WebSocket upgrades and everything under ``api_paths`` get JSON; browser
    navigations get pages. (A WebSocket client's ``Accept: */*`` is no page load.)"""
    return is_api_path(request.app[CONFIG], path) or is_websocket_upgrade(request) or not is_navigation(request)


async def unauthenticated(request: web.Request, path: str | None = None) -> web.StreamResponse:
    """A browser navigation goes to the provider; anything else gets a 401 it can act on.

    The 401's ``login_url`` comes back to the page that made the request when that page is ours
    (its ``Referer``): a front end that sends its user there after a failed ``fetch`` wants the
    page back after signing in, not the API's JSON.
    """
    if not wants_json(request, route_path(request) if path is None else path):
        raise await start_login(request, request.raw_path)
    rd = return_to(request)
    return json_answer(401, {"error": "unauthenticated", "message": "Sign in to continue.",
                             "login_url": login_url(request, rd), "request_id": request[REQUEST_ID]},
                       headers={"WWW-Authenticate": 'Bearer realm="authproxy"',
                                **cors_headers(request.app[CONFIG], request)})


def return_to(request: web.Request) -> str:
    """Our page that sent this request (``Referer`` on ``public_url``'s origin), else the request itself.

    Only a target; ``/oauth2/start`` still passes it through ``safe_redirect``.
    """
    referer = request.headers.get("Referer", "")
    if referer and not is_navigation(request):
        try:
            parts = urlsplit(referer)
        except ValueError:
            return request.raw_path
        if f"{parts.scheme}://{parts.netloc}".lower() == request.app[CONFIG].public_origin:
            return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return request.raw_path


def invalid_token(request: web.Request, exc: BearerRejected) -> web.Response:
    """401 ``invalid_token`` (RFC 6750 §3.1): the check that failed goes to the log, not to the client."""
    log.info("bearer token refused: %s rid=%s", exc.code, request[REQUEST_ID])
    return json_answer(401, {"error": "invalid_token", "message": "The access token is not valid here.",
                             "request_id": request[REQUEST_ID]},
                       headers={"WWW-Authenticate": invalid_token_header(),
                                **cors_headers(request.app[CONFIG], request)})


def forbidden(request: web.Request, path: str, session: Session) -> web.Response:
    """403 for a signed-in user the rules do not let in: who they are, and how to become someone else."""
    config, rid, ident = request.app[CONFIG], request[REQUEST_ID], session.identity
    who = signed_in_as(session)
    headers = cors_headers(config, request)
    if wants_json(request, path):
        return json_answer(403, {"error": "forbidden", "message": f"Signed in as {who}, without access here.",
                                 "user": ident.sub, "email": ident.email, "sign_out_url": SIGN_OUT_PATH,
                                 "request_id": rid}, headers=headers)
    return html_page(403, "You do not have access",
                     f"You are signed in as {who}, but this account may not use this application.", rid,
                     actions=[("Sign out", SIGN_OUT_PATH)],
                     hint="Sign out to use another account, or ask the application's administrator for access "
                          "and quote the request id below.",
                     headers=headers, templates_dir=config.templates_dir)


def signed_in_as(session: Session) -> str:
    """How to name the user to themselves: "Bob Smith (bob@example.com)", or whatever is known."""
    ident = session.identity
    name = ident.name or ident.preferred_username or ident.sub
    return f"{name} ({ident.email})" if ident.email and ident.email != name else name


async def handle_userinfo(request: web.Request) -> web.Response:
    """The signed-in user as JSON, for the app's own front end."""
    try:
        session = await identify(request)
    except BearerRejected as exc:
        return invalid_token(request, exc)
    if session is None:
        return json_answer(401, {"error": "unauthenticated"}, headers={"WWW-Authenticate": "Bearer"})
    ident = session.identity
    return json_answer(200, {"user": ident.sub, "email": ident.email, "preferred_username": ident.preferred_username,
                             "name": ident.name, "groups": list(ident.groups)})


async def handle_auth(request: web.Request) -> web.Response:
    """For nginx ``auth_request`` / Traefik forwardAuth: 202 with the identity headers, 401 or 403.

    The query may add rules for this location (``?allowed_groups=a,b&email_domains=example.com``),
    checked on top of the global ``authorization``; an unknown parameter is a 400 (fail closed).
    """
    config = request.app[CONFIG]
    try:
        extra = query_rules(request.query)
    except BadQueryRules as exc:
        log.error("/oauth2/auth: %s rid=%s", exc, request[REQUEST_ID])
        return web.Response(status=400, text=f"/oauth2/auth: {exc}\n", headers=NO_STORE)
    try:
        session = await identify(request)
    except BearerRejected as exc:
        log.info("bearer token refused: %s rid=%s", exc.code, request[REQUEST_ID])
        return web.Response(status=401, headers={**NO_STORE, "WWW-Authenticate": invalid_token_header()})
    if session is None:
        return web.Response(status=401, headers={**NO_STORE, "WWW-Authenticate": "Bearer"})
    decision = authorize_all(session.identity, (config.authorization, extra))
    if not decision.allowed:
        request.app[METRICS].refused(session.identity.sub, f"/oauth2/auth: {decision.reason}", request[REQUEST_ID])
        return web.Response(status=403, headers=NO_STORE)
    return web.Response(status=202, headers={**NO_STORE, **identity_headers(session)})
