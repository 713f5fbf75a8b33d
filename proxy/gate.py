"""The gate every non-``/oauth2`` request passes: who is this, are the tokens fresh, may it go on?

``authenticate`` loads the session (lazily, from the cookie), refreshes it when due and returns it,
or None when the user must sign in. ``handle_proxy`` then forwards, or answers an unauthenticated
request the way its sender can act on: a browser navigation goes to the provider, anything else
(fetch, XHR, API clients) gets a 401 with the login URL.
"""

from __future__ import annotations

from aiohttp import web

from .context import CLOCK, REFRESHER, REQUEST_ID
from .login import is_navigation, login_url, start_login
from .pages import NO_STORE, html_page, json_answer
from .refresh import SessionEnded
from .session import Session, get_session, set_session
from .upstream import FORWARDER, identity_headers
from .websocket import forward_websocket, is_websocket_upgrade


async def authenticate(request: web.Request) -> Session | None:
    """The request's session with fresh tokens, or None (and the cookie cleared) if there is none."""
    session = get_session(request)
    if session is None:
        return None
    try:
        fresh = await request.app[REFRESHER].ensure_fresh(session)
    except SessionEnded:
        set_session(request, None)
        return None
    if fresh is not session:
        set_session(request, fresh)
    elif session.access_expired(request.app[CLOCK]()):
        set_session(request, None)       # expired with no way to refresh: sign in again
        return None
    return fresh


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    """Every request that is not the proxy's own: authenticate, then forward upstream."""
    session = await authenticate(request)
    if session is None:
        return await unauthenticated(request)
    forwarder = request.app[FORWARDER]
    upstream = forwarder.route(request.path)
    if upstream is None:
        return html_page(404, "Not found", "No application is configured for this path.", request[REQUEST_ID])
    if is_websocket_upgrade(request):
        return await forward_websocket(request, upstream, session)
    return await forwarder.forward(request, upstream, session)


async def unauthenticated(request: web.Request) -> web.StreamResponse:
    """A browser navigation goes to the provider; anything else gets a 401 it can act on."""
    rd = request.raw_path
    if is_navigation(request):
        raise await start_login(request, rd)
    return json_answer(401, {"error": "unauthenticated", "message": "Sign in to continue.",
                             "login_url": login_url(request, rd), "request_id": request[REQUEST_ID]},
                       headers={"WWW-Authenticate": 'Bearer realm="authproxy"'})


async def handle_userinfo(request: web.Request) -> web.Response:
    """The signed-in user as JSON, for the app's own front end."""
    session = await authenticate(request)
    if session is None:
        return json_answer(401, {"error": "unauthenticated"}, headers={"WWW-Authenticate": "Bearer"})
    ident = session.identity
    return json_answer(200, {"user": ident.sub, "email": ident.email, "preferred_username": ident.preferred_username,
                             "name": ident.name, "groups": list(ident.groups)})


async def handle_auth(request: web.Request) -> web.Response:
    """For nginx ``auth_request`` / Traefik forwardAuth: 202 with the identity headers, or 401."""
    session = await authenticate(request)
    if session is None:
        return web.Response(status=401, headers={**NO_STORE, "WWW-Authenticate": "Bearer"})
    return web.Response(status=202, headers={**NO_STORE, **identity_headers(session)})
