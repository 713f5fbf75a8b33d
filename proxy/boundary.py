"""The one place where errors become HTTP: request ids, the access log, and domain errors → responses.

``error_boundary`` is the outermost middleware. It gives each request an id (the client's
``X-Request-Id`` when it looks like one), writes one access-log line and counts the answer in the
metrics, and turns every domain error raised below it (``errors.py``) into a response. Handlers and
the gate raise; nothing else builds an error response, so what a client sees for an error is decided
here, in one table:

- ``NotFound``: a page (404), whoever asks.
- ``Unauthenticated``: a browser navigation is redirected to sign in (``login.start_login``); an API
  client (fetch, XHR, ``api_paths``, a WebSocket upgrade) gets a 401 with the ``login_url`` and CORS
  headers for an allowed origin, so a front end on another origin can read it.
- ``Forbidden``: 403 naming the account the user is signed in as, with a sign-out link (a page) or
  ``sign_out_url`` (JSON) — never a redirect, which would only bring them back here.
- ``StepUpRequired`` (signed in, too weakly or too long ago for the route: ``stepup.py``): a browser
  navigation signs in again asking for the route's ``acr_values``/``max_age``; a Bearer or API client gets
  RFC 9470's 401 ``insufficient_user_authentication`` with those in ``WWW-Authenticate`` (at the bare
  ``/oauth2/auth``, nginx's, a 403 with that header: nginx's ``error_page 401`` would skip the rule set).
- ``StepUpRefused``: a 403 page (the step-up sign-in came back weaker), never another redirect.
- ``BearerRejected``: 401 ``invalid_token`` (RFC 6750 §3.1); the check that failed goes to the log only.
- ``WebSocketRefused``: its status, as a page or JSON.
- ``LogoutTokenRejected``: OAuth-style JSON (``invalid_request``, Back-Channel Logout 1.0 §2.8).
- The forward-auth endpoint (``/oauth2/auth…``, ``forward_auth.py``) answers a refusal with a bare
  status and its ``WWW-Authenticate``: nginx reads nothing else. In its ``…/redirect`` and ``…/envoy``
  forms, whose ingress passes the answer on, a sessionless page load gets the 302 to sign in and anything
  else a 401 with JSON naming the ``login_url``.
  ``/oauth2/userinfo`` answers an anonymous caller with a short JSON 401.
- Any other domain error is a failure: logged as a warning with the request id, shown as a page for a
  browser navigation (with a retry link checked like any redirect) or JSON for anything else. An
  exception that is not a domain error is a bug: logged with its traceback, shown as a 500.

Every answer carries ``X-Request-Id``; the proxy's own ``/oauth2/`` answers are never cached
(``stamp_response``, on ``on_response_prepare``, so raised redirects and streamed responses get it too).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .authz import cors_headers, is_api_path
from .bearer import invalid_token_header
from .config import CALLBACK_PATH, Config
from .context import REQUEST_ID
from .crypto import random_token
from .errors import (AuthProxyError, BadQueryRules, BearerRejected, Forbidden, LoginError, LogoutTokenRejected,
                     NotFound, StateMismatch, StepUpRefused, StepUpRequired, Unauthenticated, WebSocketRefused)
from .login import is_navigation, login_url, start_login
from .redirects import allowed_origin, here, safe_redirect
from .logs import ACCESS_LOG
from .pages import NO_STORE, html_page, json_answer
from .paths import request_key
from .session import SESSION_STATE
from .stepup import challenge
from .tracing import TRACE_ID
from .upstream import UPSTREAM_LABEL
from .websocket import SOCKET_LIFE, SocketLife, is_websocket_upgrade

if TYPE_CHECKING:
    from .metrics import Metrics
    from .model import Identity

log = logging.getLogger("authproxy")
access_log = ACCESS_LOG          # logs.py: the stdlib logger, or its own batched writer when serving

# A client's X-Request-Id is kept only if it looks like an id (no log injection through it).
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The status logged and counted for a request whose client went away before it was answered (its handler is
# cancelled): nginx's 499 "client closed request". It was a 500, so alerts on 5xx fired on normal use.
CLIENT_CLOSED_REQUEST = 499
# Endpoints whose callers read something other than the proxy's usual page or JSON.
FORWARD_AUTH_PATH = "/oauth2/auth"          # an ingress's check (forward_auth.py): status and headers only
_FORWARD_AUTH_ROUTES = (FORWARD_AUTH_PATH, FORWARD_AUTH_PATH + "/{tail}")
USERINFO_PATH = "/oauth2/userinfo"
SIGN_OUT_PATH = "/oauth2/sign_out"


class RequestIds:
    """Request ids: a random prefix per app (so per worker process, as each builds its own app) and a
    counter. Unique without asking the OS for randomness on every request: ``secrets.token_urlsafe``
    was 2 % of a tiny proxied GET. An id only names a request in logs; it guards nothing."""

    def __init__(self) -> None:
        self._prefix = random_token(6) + "-"
        self._next = itertools.count(1).__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():x}"


def request_id(incoming: str, ids: RequestIds) -> str:
    """The client's ``X-Request-Id`` when it looks like an id, else a new one."""
    return incoming if incoming and _REQUEST_ID_OK.match(incoming) else ids()


REQUEST_IDS = web.AppKey("authproxy_request_ids", RequestIds)


def error_boundary(config: Config, metrics: Metrics, ids: RequestIds | None = None) -> Middleware:
    """The middleware: an id for each request, one access-log line, and domain errors → responses.
    ``ids``: the app's (``REQUEST_IDS``), which the express lane draws from too: one prefix per worker."""
    ids = ids or RequestIds()

    @web.middleware
    async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = request_id(request.headers.get("X-Request-Id", ""), ids)
        started = time.perf_counter()
        status = 500
        try:
            response = await _handled(request, handler, config, metrics)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_REQUEST      # aiohttp cancels a handler whose client went away: no error of ours
            raise
        finally:
            life = request.get(SOCKET_LIFE)
            if life is None:
                _log_access(request, status, time.perf_counter() - started, metrics)
            else:
                _log_socket(request, life, started, metrics)

    return boundary


async def _handled(request: web.Request, handler: Handler, config: Config, metrics: Metrics) -> web.StreamResponse:
    """The handler's response, or the answer for the error it raised. HTTP exceptions (redirects) pass.

    An error while answering (the provider needed to start a login is down) is a failure like one of
    the handler's own."""
    try:
        try:
            return await handler(request)
        except AuthProxyError as exc:
            return await answer(request, exc, config, metrics)
    except web.HTTPException:
        raise
    except AuthProxyError as exc:
        return failure(request, exc, config, metrics)
    except Exception:
        log.exception("unexpected error on %s %s rid=%s", request.method, request.path, request[REQUEST_ID])
        return error_response(request, AuthProxyError("An unexpected error happened in the proxy."), config)


def _log_access(request: web.Request, status: int, elapsed: float, metrics: Metrics) -> None:
    upstream = request.get(UPSTREAM_LABEL, "proxy")
    metrics.answered(upstream, status, elapsed)
    if access_log.isEnabledFor(logging.INFO):
        _write_line(request, status, elapsed, upstream, "", {})


def _log_socket(request: web.Request, life: SocketLife, started: float, metrics: Metrics) -> None:
    """An upgraded request: a 101, with the close code and the side that closed in the line and the metrics.
    The request's duration in the histogram is the time to the 101; the line's is the socket's whole life,
    so it is written when the socket ends (``SocketLife.closed``), from what it needs of the request —
    not the request, which goes when its handler returns, long before."""
    upstream = request.get(UPSTREAM_LABEL, "proxy")
    metrics.answered(upstream, 101, life.opened - started)
    line = _line_context(request) if access_log.isEnabledFor(logging.INFO) else None

    def closed(life: SocketLife) -> None:
        end = life.end
        code, by = (end.reported_code, end.by) if end is not None else (0, "proxy")
        metrics.websocket_closed(by, code)
        if line is not None:
            _emit_line(line, 101, time.perf_counter() - started, upstream, f" ws_close={code} by={by}",
                       {"ws_close": code, "ws_closed_by": by})
    if life.end is not None:
        closed(life)
    else:
        life.on_close = closed


class _LineContext(NamedTuple):
    """What an access-log line says of its request, taken while the request is at hand."""

    method: str
    path: str
    remote: str | None
    user: str
    request_id: str
    trace: str | None


def _line_context(request: web.Request) -> _LineContext:
    state = request.get(SESSION_STATE)
    session = state.peek() if state is not None else None
    user = session.identity.sub if session is not None else "-"
    return _LineContext(request.method, request.path, request.remote, user, request[REQUEST_ID],
                        request.get(TRACE_ID))          # tracing on: find the slow request's trace


def _write_line(request: web.Request, status: int, elapsed: float, upstream: str, suffix: str,
                fields: dict[str, object]) -> None:
    _emit_line(_line_context(request), status, elapsed, upstream, suffix, fields)


def _emit_line(line: _LineContext, status: int, elapsed: float, upstream: str, suffix: str,
               fields: dict[str, object]) -> None:
    """The access line, as its parts: the writer formats them (logs.AccessLog.request) without a
    ``%``-format or the JSON fields' dict on the text format's path."""
    access_log.request(line.method, line.path, status, elapsed, line.user, line.request_id, line.remote,
                       upstream, suffix, fields, line.trace)


# -- the table: domain error → response ---------------------------------------------------------


async def answer(request: web.Request, exc: AuthProxyError, config: Config, metrics: Metrics) -> web.StreamResponse:
    """The response for ``exc``. Raises the redirect to sign in for an anonymous browser navigation."""
    bare = _endpoint(request) in _FORWARD_AUTH_ROUTES
    rid = request[REQUEST_ID]
    if isinstance(exc, BadQueryRules) and bare:
        log.error("%s: %s rid=%s", FORWARD_AUTH_PATH, exc, rid)
        return web.Response(status=400, text=f"{FORWARD_AUTH_PATH}: {exc}\n", headers=NO_STORE)
    if isinstance(exc, BearerRejected):
        log.info("bearer token refused: %s rid=%s", exc.code, rid)
        if bare:
            return web.Response(status=401, headers={**NO_STORE, "WWW-Authenticate": invalid_token_header()})
        return json_answer(401, {"error": "invalid_token", "message": "The access token is not valid here.",
                                 "request_id": rid},
                           headers={"WWW-Authenticate": invalid_token_header(), **cors_headers(config, request)})
    if isinstance(exc, Unauthenticated):
        if bare and exc.redirect and exc.login_url:       # an ingress that passes the answer on: sign in
            raise web.HTTPFound(exc.login_url, headers=NO_STORE)
        if bare and exc.login_url:
            return json_answer(401, {"error": "unauthenticated", "message": "Sign in to continue.",
                                     "login_url": exc.login_url, "request_id": rid},
                               headers={"WWW-Authenticate": 'Bearer realm="authproxy"'})
        if bare:
            return web.Response(status=401, headers={**NO_STORE, "WWW-Authenticate": "Bearer"})
        if _endpoint(request) == USERINFO_PATH:
            return json_answer(401, {"error": "unauthenticated"}, headers={"WWW-Authenticate": "Bearer"})
        return await unauthenticated(request, exc, config)
    if isinstance(exc, StepUpRequired):
        return await step_up_required(request, exc, config, bare)
    if isinstance(exc, StepUpRefused):
        log.info("step-up sign-in refused: %s rid=%s", exc.detail, rid)
        metrics.login_failed("step_up_refused", rid)          # a sign-in that did not complete, as a failure's
        return html_page(403, exc.title, str(exc), rid, actions=[("Go to the start page", "/"),
                                                               ("Sign out", SIGN_OUT_PATH)],
                         templates_dir=config.templates_dir)
    if isinstance(exc, Forbidden):
        if bare:
            return web.Response(status=403, headers=NO_STORE)
        return forbidden(request, exc, config)
    if isinstance(exc, NotFound):
        return html_page(404, exc.title, str(exc), rid, actions=[("Go to the start page", "/")],
                         templates_dir=config.templates_dir)
    if isinstance(exc, WebSocketRefused):
        if is_navigation(request):
            return html_page(exc.status, exc.title, str(exc), rid, templates_dir=config.templates_dir)
        return json_answer(exc.status, {"error": exc.code, "message": str(exc), "request_id": rid})
    if isinstance(exc, LogoutTokenRejected):
        return json_answer(exc.status, {"error": "invalid_request", "error_description": exc.description})
    return failure(request, exc, config, metrics)


def failure(request: web.Request, exc: AuthProxyError, config: Config, metrics: Metrics) -> web.Response:
    """A domain error that is a failure, not a refusal: a warning with the request id, and a page or JSON.
    A failed callback counts as a failed sign-in, by its OAuth code when it has one."""
    rid = request[REQUEST_ID]
    if request.path == CALLBACK_PATH:
        metrics.login_failed(getattr(exc, "code", type(exc).__name__), rid)
    log.warning("%s %s failed: %s (%s) rid=%s", request.method, request.path, type(exc).__name__, exc, rid)
    return error_response(request, exc, config)


def error_response(request: web.Request, exc: AuthProxyError, config: Config) -> web.Response:
    rid = request[REQUEST_ID]
    if not is_navigation(request):
        return json_answer(exc.status, {"error": type(exc).__name__, "message": str(exc), "request_id": rid})
    # The retry link is checked like any redirect: a path such as //evil.example must not become one. A failed
    # callback is never retried as it was: its state is spent (a 403 at best) and its code must not sit in a link.
    at_callback = isinstance(exc, LoginError) or request.path == CALLBACK_PATH
    retry_to = "/" if at_callback else safe_redirect(request.raw_path, config)
    if at_callback or isinstance(exc, StateMismatch):
        actions = [("Sign in again", "/oauth2/start?rd=" + quote(retry_to, safe=""))]
    else:
        actions = [("Try again", retry_to)]
    return html_page(exc.status, exc.title, str(exc), rid, actions, templates_dir=config.templates_dir)


def _endpoint(request: web.Request) -> str | None:
    """The path of the route that took the request (``/{tail}`` for the catch-all), not the request's."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def wants_json(request: web.Request, config: Config, path: str) -> bool:
    """API clients, WebSocket upgrades and everything under ``api_paths`` get JSON; browser
    navigations get pages. (A WebSocket client's ``Accept: */*`` is no page load.)"""
    return is_api_path(config, path) or is_websocket_upgrade(request) or not is_navigation(request)


async def unauthenticated(request: web.Request, exc: Unauthenticated, config: Config) -> web.Response:
    """A browser navigation goes to the provider (raised); anything else gets a 401 it can act on.

    The 401's ``login_url`` comes back to the page that made the request when that page is ours
    (its ``Referer``): a front end that sends its user there after a failed ``fetch`` wants the
    page back after signing in, not the API's JSON.
    """
    if not wants_json(request, config, request_key(request) if exc.path is None else exc.path):
        # back to this host when allowed; asking for what the route's step-up rule needs, if it has one
        raise await start_login(request, here(request, config), exc.parameters, step_up=exc.parameters is not None)
    rd = return_to(request, config)
    return json_answer(401, {"error": "unauthenticated", "message": "Sign in to continue.",
                             "login_url": login_url(request, rd, exc.parameters), "request_id": request[REQUEST_ID]},
                       headers={"WWW-Authenticate": 'Bearer realm="authproxy"', **cors_headers(config, request)})


def return_to(request: web.Request, config: Config) -> str:
    """Our page that sent this request (``Referer`` on ``public_url``'s origin or an allowed host's), else the
    request itself (``redirects.here``: absolute on an allowed host).

    Only a target; ``/oauth2/start`` still passes it through ``safe_redirect``.
    """
    referer = request.headers.get("Referer", "")
    if referer and not is_navigation(request):
        try:
            parts = urlsplit(referer)
        except ValueError:
            return here(request, config)
        page = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if f"{parts.scheme}://{parts.netloc}".lower() == config.public_origin:
            return page
        if not parts.username and not parts.password and "@" not in parts.netloc:
            origin = allowed_origin(config, parts.scheme, parts.netloc)     # a page on another allowed host
            if origin is not None:
                return origin + page
    return here(request, config)


async def step_up_required(request: web.Request, exc: StepUpRequired, config: Config,
                           bare: bool) -> web.StreamResponse:
    """A session that signed in too weakly or too long ago for the route (``stepup.py``): a browser's page
    load signs in again asking for what the route needs (raised); a Bearer token, which cannot, and an API
    client get RFC 9470's 401 ``insufficient_user_authentication``. At ``/oauth2/auth``: the redirect
    where the ingress passes the answer on (or that 401 for an API client), else — nginx — a bare 403
    with the same challenge (a 401 there would be handed to authproxy as the proxy, past the rule set)."""
    rid = request[REQUEST_ID]
    log.info("step-up needed: %s rid=%s", exc.reason, rid)
    headers = {"WWW-Authenticate": challenge(exc.parameters)}
    if bare:
        if exc.redirect and exc.login_url:
            raise web.HTTPFound(exc.login_url, headers=NO_STORE)
        if not exc.login_url:
            # nginx's form: a 403, not RFC 9470's 401. nginx hands a 401 to its ``error_page 401`` location,
            # which (deployment.md) passes the original request to authproxy as the proxy — where this
            # session is signed in and the rule set is unknown, so it would be forwarded: the step-up skipped.
            return web.Response(status=403, headers={**NO_STORE, **headers})
    elif not exc.bearer and not wants_json(request, config, request_key(request) if exc.path is None else exc.path):
        raise await start_login(request, here(request, config), exc.parameters, step_up=True)
    body: dict[str, object] = {"error": "insufficient_user_authentication",
                               "message": "Sign in again, more strongly or more recently.", "request_id": rid}
    if not exc.bearer:
        body["login_url"] = exc.login_url or login_url(request, return_to(request, config), exc.parameters)
    for name in ("acr_values", "max_age"):
        if name in exc.parameters:
            body[name] = exc.parameters[name]
    return json_answer(401, body, headers={**headers, **cors_headers(config, request)})


def forbidden(request: web.Request, exc: Forbidden, config: Config) -> web.Response:
    """403 for a signed-in user the rules do not let in: who they are, and how to become someone else."""
    rid, ident = request[REQUEST_ID], exc.identity
    who = signed_in_as(ident)
    headers = cors_headers(config, request)
    if wants_json(request, config, request_key(request) if exc.path is None else exc.path):
        return json_answer(403, {"error": "forbidden", "message": f"Signed in as {who}, without access here.",
                                 "user": ident.sub, "email": ident.email, "sign_out_url": SIGN_OUT_PATH,
                                 "request_id": rid}, headers=headers)
    return html_page(403, "You do not have access",
                     f"You are signed in as {who}, but this account may not use this application.", rid,
                     actions=[("Sign out", SIGN_OUT_PATH)],
                     hint="Sign out to use another account, or ask the application's administrator for access "
                          "and quote the request id below.",
                     headers=headers, templates_dir=config.templates_dir)


def signed_in_as(ident: Identity) -> str:
    """How to name the user to themselves: "Bob Smith (bob@example.com)", or whatever is known."""
    name = ident.name or ident.preferred_username or ident.sub
    return f"{name} ({ident.email})" if ident.email and ident.email != name else name


async def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries the request id; the proxy's own answers are never cached."""
    rid = request.get(REQUEST_ID)
    if rid and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid
    if request.path.startswith("/oauth2/") and request.path != "/oauth2/jwks":   # public keys: cacheable
        response.headers.update(NO_STORE)
