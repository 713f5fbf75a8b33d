"""Signing in and out: ``/oauth2/start``, ``/oauth2/callback``, ``/oauth2/sign_out`` and the redirect guard.

The authorization-code flow (RFC 6749 §4.1) with PKCE S256 (RFC 7636), ``state`` and, for OpenID
Connect, ``nonce``, as the OAuth 2.0 Security BCP (RFC 9700 §2.1) asks. Everything the callback
must check later — state, PKCE verifier, nonce, where to go back to — lives in a short-lived login
cookie *named after the state*, sealed like the session: two tabs signing in at once each find their
own. At most ``MAX_LOGIN_COOKIES`` count, the newest by issue time: a start evicts the oldest, and
since concurrent starts each see the same old set, the cap is also enforced when reading — the
callback accepts only one of the newest, and any response to a request carrying more clears the
rest (``trim_login_cookies``), so a burst of logins never piles cookies up into a 400 or 431.

Every redirect target that came from a request (``rd``, the stored page) passes ``safe_redirect``
(``redirects.py``), which only ever yields a URL on ``public_url``'s origin.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, replace
from html import escape
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web
from multidict import MultiDict, MultiMapping

from .authorize_params import CHECKED, check_asked, requested
from .config import Config
from .context import CLOCK, CONFIG, PROVIDER, REQUEST_ID, SEALER
from .cookies import MAX_COOKIE_BYTES, cookie_header, is_token, request_cookies
from .crypto import pkce_pair, random_token
from .ending import ENDS, Reason
from .errors import (AuthorizationDenied, CookieError, LoginError, StateMismatch, StepUpRefused, StoreUnavailable,
                     TokenValidationError)
from .metrics import METRICS
from .model import Session
from .pages import NO_STORE, html_page
from .provider import Provider, TokenSet
from .redirects import safe_redirect
from .session import commit_session, cookie_session_id, defer_cookie, get_session, set_session
from .stepup import authentication, opened_step_up, step_up_query

log = logging.getLogger("authproxy.login")

# A login must come back from the provider within this long.
LOGIN_TTL = 600
# Largest form_post authorization response read (a code, a state, an iss and an error text fit many times).
MAX_FORM_BYTES = 16 * 1024
# Login cookies kept at once (one per tab signing in); the oldest beyond this are evicted.
MAX_LOGIN_COOKIES = 3

# The characters RFC 6749 §4.1.2.1 allows in an error response's ``error`` and ``error_description``.
_OAUTH_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
# Parameters of the authorization response (RFC 6749 §4.1.2, §4.1.2.1; RFC 9207), each allowed once.
CALLBACK_PARAMETERS = ("state", "code", "iss", "error", "error_description", "error_uri")
# Headers of the callback's answers. The callback's URL holds the code and state: a page there that
# moves on by itself (``html_redirect``) would hand that URL to the app as Referer (RFC 9700 §4.2.4),
# and a redirect's Referrer-Policy governs the request it leads to.
AT_REDIRECT_URI = {**NO_STORE, "Referrer-Policy": "no-referrer"}


def is_navigation(request: web.Request) -> bool:
    """Whether this request is a top-level page navigation, which may be redirected to the provider.

    Anything else (fetch, XHR, images, API clients) gets a 401 with the login URL: a fetch that
    followed a redirect to the provider would only end in a CORS error.

    Browsers send ``Sec-Fetch-*`` only to trustworthy origins (https, localhost): from a plain-http
    host a ``fetch()`` comes with none and ``Accept: */*``. Every browser's navigation names
    ``text/html`` in ``Accept``, so ``*/*`` alone counts only with ``Sec-Fetch-Mode: navigate``.
    """
    h = request.headers
    mode, dest = h.get("Sec-Fetch-Mode"), h.get("Sec-Fetch-Dest")
    if mode is not None and mode != "navigate":
        return False
    if dest is not None and dest != "document":
        return False
    if h.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    accept = h.get("Accept", "").lower()
    return "text/html" in accept or "application/xhtml+xml" in accept or (mode == "navigate" and "*/*" in accept)


def login_url(request: web.Request, rd: str, step_up: dict[str, str] | None = None) -> str:
    """Where to send a user to sign in and come back to ``rd``: our own ``/oauth2/start`` — with a route's
    step-up parameters sealed into it (``stepup.step_up_query``) when it asks for them."""
    query = {"rd": rd}
    if step_up:
        query["step_up"] = step_up_query(request.app[SEALER], step_up)
    return request.app[CONFIG].public_url + "/oauth2/start?" + urlencode(query)


# -- the login cookie ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginState:
    state: str
    verifier: str
    nonce: str | None
    rd: str
    created: float
    # The max_age / acr_values asked for, which the ID token must answer (authorize_params.check_asked).
    asked: dict[str, str] | None = None
    # A step-up sign-in (stepup.py): an answer short of ``asked`` is a 403 page, and the session it
    # completes replaces the browser's current one, which ends (Reason.STEP_UP).
    step_up: bool = False
    # The id of the session the step-up started from: it is ended even if the callback does not carry its
    # cookie (``cookie.samesite: strict`` withholds it from the provider's cross-site redirect).
    replaces: str | None = None


def _login_prefix(config: Config) -> str:
    return config.cookie.name + "_login_"


def _open_login(request: web.Request, name: str) -> LoginState | None:
    """The login state in cookie ``name``; None if it does not open, is stale, or came twice."""
    try:
        raw = request.app[SEALER].open(request_cookies(request).owned(name), name.encode())
        data = json.loads(raw)
        login = LoginState(**data)
    except (CookieError, ValueError, TypeError, KeyError):
        return None
    if login.created + LOGIN_TTL < request.app[CLOCK]() or name != _login_prefix(request.app[CONFIG]) + login.state:
        return None
    return login


_LOGIN_COOKIES: web.RequestKey[tuple[list[str], list[str]]] = web.RequestKey("authproxy_login_cookies")


def _login_cookies(request: web.Request) -> tuple[list[str], list[str]]:
    """The request's login cookies: ``(newest, rest)``. ``newest``: the names of at most
    ``MAX_LOGIN_COOKIES`` live ones, newest first by issue time; ``rest``: every other login cookie —
    older, stale, forged or sent twice — all to be cleared. Names that are not RFC 6265 tokens are
    neither: no ``Set-Cookie`` can name them, and they are not ours."""
    if _LOGIN_COOKIES in request:          # start or callback, then trim_login_cookies: opened once
        return request[_LOGIN_COOKIES]
    prefix = _login_prefix(request.app[CONFIG])
    raw = request.headers.get("Cookie")
    names = [] if raw is None or prefix not in raw else \
        [name for name in request_cookies(request) if name.startswith(prefix) and is_token(name)]
    opened = [(name, _open_login(request, name)) for name in names]
    live = sorted(((login.created, name) for name, login in opened if login is not None), reverse=True)
    newest = [name for _, name in live[:MAX_LOGIN_COOKIES]]
    request[_LOGIN_COOKIES] = found = (newest, [name for name in names if name not in newest])
    return found


def _login_cookie(config: Config, name: str, value: str, max_age: float) -> str:
    # The provider sends the browser back with a cross-site top-level GET: "Strict" would withhold
    # the cookie there, so login cookies are Lax unless the operator chose None — or the answer comes
    # as a cross-site POST (form_post), which carries only SameSite=None cookies. That costs little
    # here: the cookie opens only the one callback whose state names it, and lives 10 minutes; the
    # session cookie keeps cookie.samesite. Their path is "/" whatever cookie.path says:
    # /oauth2/callback must receive them.
    cross_site_post = config.provider.response_mode == "form_post"
    samesite = "None" if config.cookie.samesite == "none" or cross_site_post else "Lax"
    return cookie_header(name, value, max_age=max_age, path="/", domain=config.cookie.domain,
                         secure=config.cookie.secure, samesite=samesite)


async def start_login(request: web.Request, rd: str, params: dict[str, str] | None = None, *,
                      step_up: bool = False) -> web.HTTPFound:
    """A redirect to the provider's authorization endpoint, with a new login cookie set. ``params``:
    sign-in parameters already checked by ``authorize_params.requested``, or a step-up's (``step_up``)."""
    config, provider = request.app[CONFIG], request.app[PROVIDER]
    state, (verifier, challenge) = random_token(), pkce_pair()
    nonce = random_token() if provider.is_oidc else None
    target = safe_redirect(rd, config)
    url = await provider.authorization_url(state=state, code_challenge=challenge, nonce=nonce, extra=params)
    response = web.HTTPFound(url, headers=NO_STORE)
    request.app[METRICS].login_started()
    newest, rest = _login_cookies(request)
    for name in rest + newest[MAX_LOGIN_COOKIES - 1:]:      # room for the new one
        response.headers.add("Set-Cookie", _login_cookie(config, name, "", 0))
    name, now = _login_prefix(config) + state, request.app[CLOCK]()
    merged = {**config.provider.extra_authorize_params, **(params or {})}
    asked: dict[str, str] | None = {name: merged[name] for name in CHECKED if name in merged} or None
    login = LoginState(state=state, verifier=verifier, nonce=nonce, rd=target, created=now, asked=asked,
                       step_up=step_up, replaces=cookie_session_id(request) if step_up else None)
    response.headers.add("Set-Cookie", _login_cookie(config, name, _sealed_login(request, name, login), LOGIN_TTL))
    return response


def _sealed_login(request: web.Request, name: str, login: LoginState) -> str:
    """The login cookie's value. One too big for a browser to keep (a very long ``rd``) would be
    dropped silently and the sign-in fail at the callback; it goes back to the start page instead."""
    sealer = request.app[SEALER]
    sealed = sealer.seal(json.dumps(asdict(login)).encode(), name.encode())
    if len(name) + 1 + len(sealed) > MAX_COOKIE_BYTES:
        log.info("the page to return to (%d characters) does not fit in a cookie: returning to /", len(login.rd))
        fallback = replace(login, rd=safe_redirect("/", request.app[CONFIG]))
        sealed = sealer.seal(json.dumps(asdict(fallback)).encode(), name.encode())
    return sealed


async def handle_start(request: web.Request) -> web.StreamResponse:
    """A sign-in from a link: its allowed parameters, and a step-up's when it carries one we sealed (a
    route's rule asks for them, not the link: ``stepup.py``)."""
    params = requested(request.query, request.app[CONFIG].provider.authorize_parameters)
    step_up = request.query.get("step_up")
    if step_up:
        params.update(opened_step_up(request.app[SEALER], step_up))
    raise await start_login(request, request.query.get("rd") or "/", params, step_up=bool(step_up))


async def handle_callback(request: web.Request) -> web.StreamResponse:
    """The provider's redirect back (RFC 6749 §4.1.2): check, exchange, verify, start the session.

    Each step refuses before the next begins: a response that is not ours never reaches the token
    endpoint, and a code is spent only once its response passed every check."""
    config, provider = request.app[CONFIG], request.app[PROVIDER]
    params = await _response_parameters(request, config)
    login = _spend_login(request, params)
    code = _authorization_code(params, provider, config)
    tokens = await provider.exchange_code(code, login.verifier)
    claims, id_claims = await _verified_claims(provider, config, tokens, login.nonce)
    if provider.is_oidc and login.asked:
        try:
            check_asked(id_claims, login.asked, request.app[CLOCK](), config.provider.clock_skew)
        except TokenValidationError as exc:
            if login.step_up:       # a page that says so, not another trip to the provider (a loop)
                raise StepUpRefused(exc.detail) from None
            raise
    replaced = {login.replaces, cookie_session_id(request)} if login.step_up else set()
    await _establish_session(request, provider, tokens, claims, id_claims)
    for session_id in sorted(filter(None, replaced)):
        await _end_replaced(request, session_id)
    target = safe_redirect(login.rd, config)
    if config.cookie.samesite == "strict":
        # After a cross-site redirect chain, browsers withhold Strict cookies from the next request;
        # a same-site navigation from this page carries them.
        return html_redirect(target)
    raise web.HTTPFound(target, headers=AT_REDIRECT_URI)


async def _response_parameters(request: web.Request, config: Config) -> MultiMapping[str]:
    """The authorization response's parameters: the query of the provider's redirect, or with
    ``response_mode: form_post`` the form it has the browser POST (OAuth 2.0 Form Post Response Mode
    §2). Only the mode that was asked for is taken: a code in a URL when we asked for a POST would be
    one that has been through browser history and Referer headers."""
    if config.provider.response_mode != "form_post":
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], headers=NO_STORE)
        return request.query
    if request.method != "POST":
        raise LoginError("The sign-in response came as a link, but this proxy asks for it as a form (form_post); "
                         "start again.")
    if request.content_type != "application/x-www-form-urlencoded":
        raise LoginError("The sign-in response is not a form; start again.")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise LoginError("The sign-in response is too large; start again.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise LoginError("The sign-in response is not a readable form; start again.") from None
    return MultiDict(pairs)


def _spend_login(request: web.Request, params: MultiMapping[str]) -> LoginState:
    """The login this response answers, found by its ``state`` (RFC 6749 §10.12) among this browser's
    newest login cookies; that cookie is cleared whatever happens next, so a state works once."""
    _refuse_repeated_parameters(params)
    state = params.get("state")
    if not state:
        raise StateMismatch("The sign-in response carried no state; start again from the application.")
    name = _login_prefix(request.app[CONFIG]) + state
    login = _open_login(request, name) if name in _login_cookies(request)[0] else None
    if login is None:
        raise StateMismatch("This sign-in response does not belong to a sign-in started in this browser "
                            "(or it was already used, or it is older than 10 minutes); start again.")
    defer_cookie(request, _login_cookie(request.app[CONFIG], name, "", 0))
    return login


def _authorization_code(query: MultiMapping[str], provider: Provider, config: Config) -> str:
    """The ``code`` of a response from our provider (RFC 9207 ``iss`` first), or the error it carries
    (RFC 6749 §4.1.2.1), shown only as plain text."""
    if provider.is_oidc:
        _check_issuer(query.get("iss"), provider, config)
    if "error" in query:
        error = _plain_text(query["error"], 80) or "an error code that is not plain text"
        description = _plain_text(query.get("error_description"), 200)
        if error == "invalid_scope":
            # RFC 6749 §4.1.2.1: not the user's permission, but which scopes this client may ask for.
            description = ("a setting of this application at the provider, not a permission of your account: it "
                           f"may not ask for the scopes {' '.join(config.provider.scopes)[:80]} (provider.scopes)"
                           + (f"; it said: {description}" if description else ""))
        raise AuthorizationDenied(error, description)
    code = query.get("code")
    if not code:
        raise LoginError("The sign-in response carried no authorization code; start again.")
    return code


async def _verified_claims(provider: Provider, config: Config, tokens: TokenSet,
                           nonce: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Who signed in: the verified ID token's claims (OIDC Core §3.1.3.7) and, when configured or for
    plain OAuth 2.0, userinfo's — which must name the same ``sub`` (OIDC Core §5.3.2) — merged, with, for an
    Entra ID user whose groups overflowed the token, the groups Graph lists (any failure there fails the
    sign-in); and the ID token's alone, the only ones that say how the user signed in (``acr``, ``auth_time``:
    userinfo is no signed statement about the sign-in, and a claim the ID token lacks must not be filled
    from it)."""
    id_claims: dict[str, Any] = {}
    if provider.is_oidc:
        if not tokens.id_token:
            raise TokenValidationError("id_token", "the token response has no ID token")
        id_claims = await provider.verify_id_token(tokens.id_token, nonce=nonce)
    claims = id_claims
    if config.provider.use_userinfo or not provider.is_oidc:
        info = await provider.userinfo(tokens.access_token)
        if id_claims and info.get("sub") != id_claims["sub"]:
            raise TokenValidationError("userinfo_sub", "the userinfo subject differs from the ID token's")
        claims = {**info, **id_claims}
    if provider.groups_overflowed(claims):      # Entra ID: more groups than a token holds (provider/graph.py)
        claims = {**claims, "groups": await provider.overflowed_groups(tokens.access_token)}
    return claims, id_claims


async def _establish_session(request: web.Request, provider: Provider, tokens: TokenSet,
                             claims: dict[str, Any], id_claims: dict[str, Any]) -> None:
    """A new session, with a new id, in place of whatever session cookie came in (no fixation), saved now.
    How the user signed in comes from the ID token alone (``stepup.authentication``)."""
    now = request.app[CLOCK]()
    acr, auth_time = authentication(id_claims)
    session = Session(identity=provider.identity_from(claims), access_token=tokens.access_token, created_at=now,
                      issued_at=now, expires_at=tokens.expires_at, refresh_token=tokens.refresh_token,
                      id_token=tokens.id_token,
                      sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None, id=random_token(16),
                      acr=acr, auth_time=auth_time)
    set_session(request, session)
    await commit_session(request)
    request.app[METRICS].login_completed(session.identity.sub, request[REQUEST_ID])


async def _end_replaced(request: web.Request, session_id: str) -> None:
    """End the session a step-up sign-in replaced (``Reason.STEP_UP``), everywhere it is held: its cookie
    copies, its sockets. A store that is down records it later (``SessionEnds``); the sign-in stands."""
    ends = request.app[ENDS]
    try:
        await ends.end(ends.new(Reason.STEP_UP, session_id=session_id))
    except StoreUnavailable as exc:
        log.error("step-up: the replaced session ended on this host and is recorded in the store once it is "
                  "back: %s rid=%s", exc, request[REQUEST_ID])


def _check_issuer(iss: str | None, provider: Provider, config: Config) -> None:
    """RFC 9207 §2.4: a mix-up attack shows as an authorization response from another issuer — or, from
    a provider that promises ``iss``, as one without it. Error responses are authorization responses
    too (§2): checked first, so another issuer's error text is never shown as our provider's."""
    meta = provider.metadata
    if iss is None and meta is not None and meta.authorization_response_iss_parameter_supported:
        raise TokenValidationError("iss", "the authorization response has no iss, though the provider "
                                   "promises one (RFC 9207)")
    if iss is not None and iss != config.provider.issuer:
        raise TokenValidationError("iss", "the authorization response came from another issuer (RFC 9207)")


def _refuse_repeated_parameters(query: MultiMapping[str]) -> None:
    """RFC 6749 §3.1: a response parameter "MUST NOT be included more than once". Two ``state``,
    ``code`` or ``iss`` values leave it to whoever reads first which one counts — an appended
    ``iss`` or ``code`` must not get a say — so such a response is refused before anything is used."""
    for name in CALLBACK_PARAMETERS:
        if len(query.getall(name, ())) > 1:
            raise LoginError(f"The sign-in response carried {name} more than once; start again.")


def _plain_text(value: str | None, limit: int) -> str | None:
    """``value`` if it keeps to the characters RFC 6749 §4.1.2.1 allows in ``error`` and
    ``error_description`` (printable ASCII but '"' and '\\'), cut to ``limit``; else None. The text is
    shown on our origin and logged: no controls, no look-alike or right-to-left characters."""
    if value is None or _OAUTH_TEXT.fullmatch(value) is None:
        return None
    return value[:limit]


async def trim_login_cookies(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: a request that carries more login cookies than the cap (concurrent
    starts in one browser each added one) gets the oldest and the unusable ones cleared on whatever
    response it receives, so they cannot grow the ``Cookie`` header for ten minutes. Every response
    passes here: one without a login cookie costs a substring search."""
    raw = request.headers.get("Cookie")
    if raw is None or "_login_" not in raw:
        return
    rest = _login_cookies(request)[1]
    if not rest:
        return
    config = request.app[CONFIG]
    already = {h.split("=", 1)[0] for h in response.headers.getall("Set-Cookie", ())}
    for name in rest:
        if name not in already:
            response.headers.add("Set-Cookie", _login_cookie(config, name, "", 0))


def html_redirect(target: str) -> web.Response:
    body = (f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={escape(target)}">'
            f'<title>Signed in</title><p>Signed in. <a href="{escape(target)}">Continue</a></p>')
    return web.Response(text=body, content_type="text/html", headers=AT_REDIRECT_URI)


async def handle_sign_out(request: web.Request) -> web.StreamResponse:
    """End the session here (``SessionEnds``: everywhere it is held), then at the provider when it
    supports RP-initiated logout. The browser's cookies are cleared whatever happens.

    When the session store cannot be reached the session is ended all the same: its id is in the
    cookie, so the end is applied on this host (its sockets close, every copy of the cookie is refused
    here) and recorded in the store as soon as the store is back (``SessionEnds`` keeps retrying).
    Only a cookie that names no session leaves nothing to end; the page then says what is true."""
    config, provider = request.app[CONFIG], request.app[PROVIDER]
    ends = request.app[ENDS]
    session: Session | None = None
    try:
        session = await get_session(request)
        session_id = session.id if session is not None else None
    except StoreUnavailable as exc:
        session_id = cookie_session_id(request)
        log.error("sign-out: the session store could not be reached: %s rid=%s", exc, request[REQUEST_ID])
        if session_id is None:
            set_session(request, None)
            return _signed_out_here_only(request)
    set_session(request, None)
    if session is not None:
        request.app[METRICS].logged_out(session.identity.sub)
    if session_id:
        try:
            await ends.end(ends.new(Reason.SIGN_OUT, session_id=session_id))
        except StoreUnavailable as exc:
            log.error("sign-out: the session ended on this host and is recorded in the store once it is back: "
                      "%s rid=%s", exc, request[REQUEST_ID])
    signed_out = config.public_url + "/oauth2/signed_out"
    end_session = provider.end_session_url(id_token_hint=session.id_token if session else None,
                                           post_logout_redirect_uri=signed_out)
    raise web.HTTPFound(end_session or safe_redirect(request.query.get("rd"), config, default=signed_out),
                        headers=NO_STORE)


def _signed_out_here_only(request: web.Request) -> web.StreamResponse:
    return html_page(503, "Signed out in this browser only",
                     "Your session cookie is cleared, but the server side could not be reached to end the "
                     "session there: it ends by itself when it expires. This browser no longer holds it, "
                     "so signing out again cannot end it sooner.",
                     request[REQUEST_ID], actions=[("Go to the start page", "/")],
                     templates_dir=request.app[CONFIG].templates_dir)


async def handle_signed_out(request: web.Request) -> web.StreamResponse:
    return html_page(200, "You are signed out", "Your session has ended. Sign in again to continue.",
                     request.get(REQUEST_ID, "-"), actions=[("Sign in again", "/oauth2/start?rd=%2F")],
                     templates_dir=request.app[CONFIG].templates_dir)
