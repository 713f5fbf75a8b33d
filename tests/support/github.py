"""A fake GitHub (OAuth app endpoints and the two REST calls authproxy makes), started on a free loopback port.

GitHub cannot be reached from the test machines, and it differs from an OpenID Connect provider in ways the
proxy has to survive, so this server answers the way GitHub's documentation says it does:

- ``GET /login/oauth/authorize`` ("Authorizing OAuth apps", step 1) approves at once as the configured user
  and redirects to ``redirect_uri`` with ``code`` and ``state`` only: no ``iss`` (GitHub does not implement
  RFC 9207). An unknown ``client_id`` is a 404 page; a ``redirect_uri`` that is not the registered callback
  URL or below it is an error page and never a redirect (github.com's behaviour today; old GitHub docs said
  it redirected to the registered URL with ``error=redirect_uri_mismatch`` instead). PKCE is S256 only.
- ``POST /login/oauth/access_token`` (step 2) takes the client credentials as form fields or HTTP Basic,
  answers form-encoded unless ``Accept`` asks for JSON, and reports every error with **HTTP 200** and an
  ``error`` member ("Troubleshooting OAuth app access token request errors"). Codes are single-use and
  live 10 minutes. OAuth apps' tokens (``gho_``) never expire; with ``expiring=True`` the server behaves
  like a GitHub App with expiring user tokens ("Refreshing user access tokens"): ``ghu_`` tokens with
  ``expires_in``, a ``ghr_`` refresh token with ``refresh_token_expires_in``, and a refresh grant that
  spends the refresh token *and* the old access token.
- ``GET /api/v3/user`` and ``/api/v3/user/emails`` (the GitHub Enterprise Server layout, which the proxy
  uses for any ``base_url`` but github.com) take ``Bearer`` or ``token`` credentials, refuse a request
  without ``User-Agent`` with 403 ("REST API: user agent required"), answer 401 ``Bad credentials`` for an
  unknown or expired token, and 404 for ``/user/emails`` without the ``user`` or ``user:email`` scope.

Everything received is recorded (``requests``, with secrets redacted) and every token-endpoint call becomes a
``Grant``, so tests assert on what the proxy actually sent. The clock is an input, so code expiry is
testable without waiting ten minutes.
"""

from __future__ import annotations

import json

import base64
import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from aiohttp import web
from multidict import CIMultiDict

CLIENT_ID = "Ov23liAuthproxyTest01"
CLIENT_SECRET = "0123456789abcdef0123456789abcdef01234567"

# GitHub: "The code will expire after 10 minutes" (Authorizing OAuth apps, step 1).
CODE_TTL = 600.0
# GitHub Apps: user access tokens live 8 hours, refresh tokens 6 months (Refreshing user access tokens).
DEFAULT_EXPIRES_IN = 28800
DEFAULT_REFRESH_TOKEN_EXPIRES_IN = 15897600
# Scopes that let a token read /user/emails ("List email addresses for the authenticated user").
EMAIL_SCOPES = frozenset({"user", "user:email"})
# Form fields never kept in the request log.
SECRET_FIELDS = frozenset({"client_secret", "code", "code_verifier", "refresh_token"})

_DOCS = "https://docs.github.com"
_TOKEN_ERRORS_URI = "/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/"
# error -> (error_description, error_uri), as GitHub words them.
TOKEN_ERRORS = {
    "incorrect_client_credentials": ("The client_id and/or client_secret passed are incorrect.",
                                     _TOKEN_ERRORS_URI + "#incorrect-client-credentials"),
    "redirect_uri_mismatch": ("The redirect_uri MUST match the registered callback URL for this application.",
                              _TOKEN_ERRORS_URI + "#redirect-uri-mismatch2"),
    "bad_verification_code": ("The code passed is incorrect or expired.",
                              _TOKEN_ERRORS_URI + "#bad-verification-code"),
    "bad_refresh_token": ("The refresh token passed is incorrect or expired.",
                          _TOKEN_ERRORS_URI + "#bad-refresh-token"),
    "unsupported_grant_type": ("The grant type is not supported.", _TOKEN_ERRORS_URI),
}
NO_USER_AGENT = ("Request forbidden by administrative rules. Please make sure your request has a User-Agent "
                 "header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). "
                 "Check https://developer.github.com for other possible causes.\n")
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Email:
    """One entry of ``GET /user/emails``."""

    email: str
    primary: bool
    verified: bool
    visibility: Literal["public", "private"] | None = None


# Primary last and a verified non-primary first: a client that takes "the first" or "the first verified"
# address gets the wrong one.
PRIMARY_EMAIL = "octocat@example.com"
DEFAULT_EMAILS = (
    Email("octo-work@example.com", primary=False, verified=True),
    Email("octo-unverified@example.com", primary=False, verified=False),
    Email(PRIMARY_EMAIL, primary=True, verified=True, visibility="private"),
)


@dataclass(frozen=True)
class GitHubUser:
    """The account every authorization is approved as. ``public_email`` is what ``/user`` shows (None = private)."""

    login: str = "octocat"
    id: int = 583231
    name: str = "The Octocat"
    public_email: str | None = None
    emails: tuple[Email, ...] = DEFAULT_EMAILS
    orgs: tuple[str, ...] = ()
    teams: tuple[tuple[str, str], ...] = ()         # (org login, team slug)

    def profile(self, base_url: str) -> dict[str, Any]:
        """``GET /user`` for this account (REST API users: "Get the authenticated user")."""
        api = f"{base_url}/api/v3/users/{self.login}"
        return {
            "login": self.login, "id": self.id, "node_id": "MDQ6VXNlcjU4MzIzMQ==",
            "avatar_url": f"{base_url}/avatars/u/{self.id}", "gravatar_id": "", "url": api,
            "html_url": f"{base_url}/{self.login}", "repos_url": api + "/repos", "type": "User",
            "site_admin": False, "name": self.name, "company": "@github", "blog": "https://github.blog",
            "location": "San Francisco", "email": self.public_email, "hireable": None, "bio": None,
            "twitter_username": None, "public_repos": 2, "public_gists": 1, "followers": 20, "following": 0,
            "created_at": "2011-01-25T18:44:36Z", "updated_at": "2024-01-22T12:00:00Z",
        }


@dataclass(frozen=True)
class SeenRequest:
    """What the fake received: the ``Authorization`` value is cut to its scheme, secret form fields hidden."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    form: dict[str, str]


@dataclass(frozen=True)
class Grant:
    """One call of the token endpoint and its outcome.

    ``pkce`` is "verified" when a challenge was sent and the verifier matched, "failed" when it did not,
    None when the authorization carried no challenge. ``spent_refresh_token`` is the refresh token a
    refresh grant presented; ``access_token`` and ``refresh_token`` are what was issued.
    """

    grant_type: str
    ok: bool
    error: str | None
    client_auth: Literal["basic", "post"] | None
    answered_as: Literal["json", "form"]
    pkce: Literal["verified", "failed"] | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    spent_refresh_token: str | None = None


@dataclass
class _Code:
    client_id: str
    redirect_uri: str | None
    scopes: tuple[str, ...]
    challenge: str | None
    created: float


@dataclass
class _Token:
    scopes: tuple[str, ...]
    expires_at: float | None


@dataclass
class _Refresh:
    scopes: tuple[str, ...]
    expires_at: float
    access_token: str


class _TokenError(Exception):
    def __init__(self, error: str, pkce: Literal["verified", "failed"] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.pkce = pkce


@dataclass
class FakeGitHub:
    """A running fake; made by ``start_github()``. Options are attributes, so a test may change them."""

    url: str
    client_id: str
    client_secret: str
    callback_url: str
    user: GitHubUser
    expiring: bool
    expires_in: int
    refresh_token_expires_in: int
    token_type: str
    answer_format: Literal["auto", "json", "form"]
    approve: bool
    clock: Callable[[], float]
    requests: list[SeenRequest] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _tokens: dict[str, _Token] = field(default_factory=dict)
    _refresh_tokens: dict[str, _Refresh] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- for assertions ------------------------------------------------------------------------------------

    def requests_to(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == path]

    def count_grants(self, grant_type: str, ok: bool | None = True) -> int:
        """Token-endpoint calls of ``grant_type``: successful ones, failed ones (ok=False), or all (None)."""
        return sum(1 for g in self.grants if g.grant_type == grant_type and (ok is None or g.ok is ok))

    def token_is_active(self, access_token: str) -> bool:
        token = self._tokens.get(access_token)
        return token is not None and (token.expires_at is None or token.expires_at > self.clock())

    def refresh_token_is_active(self, refresh_token: str) -> bool:
        entry = self._refresh_tokens.get(refresh_token)
        return entry is not None and entry.expires_at > self.clock()

    # -- the app -------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self._require_user_agent])
        app.router.add_get("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/access_token", self._access_token)
        app.router.add_get("/api/v3/user", self._api_user)
        app.router.add_get("/api/v3/user/emails", self._api_emails)
        app.router.add_get("/api/v3/user/orgs", self._api_orgs)
        app.router.add_get("/api/v3/user/teams", self._api_teams)
        return app

    @web.middleware
    async def _record(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        headers = CIMultiDict(request.headers)
        if "Authorization" in headers:
            headers["Authorization"] = headers["Authorization"].split(" ", 1)[0] + " <redacted>"
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            posted = await request.post()      # cached: the handler reads it again
            form = {k: "<redacted>" if k in SECRET_FIELDS else str(v) for k, v in posted.items()}
        self.requests.append(SeenRequest(request.method, request.path, dict(request.query), headers, form))
        return await handler(request)

    @web.middleware
    async def _require_user_agent(self, request: web.Request,
                                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                  ) -> web.StreamResponse:
        if request.path.startswith("/api/") and not request.headers.get("User-Agent"):
            return web.Response(status=403, text=NO_USER_AGENT, content_type="text/plain")
        return await handler(request)

    # -- step 1: the authorization page --------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("client_id") != self.client_id:
            return _page(404, "Not Found", "There is no OAuth app with this client_id.")
        redirect_uri = q.get("redirect_uri")
        if redirect_uri is not None and not _redirect_allowed(redirect_uri, self.callback_url):
            return _page(400, "Redirect URI mismatch",
                         "The redirect_uri is not associated with this application.")
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge is not None and method != "S256":
            return _page(400, "Unsupported code_challenge_method", "Only S256 is supported for PKCE.")
        back = redirect_uri or self.callback_url
        params: dict[str, str] = {}
        if self.approve:
            code = secrets.token_hex(10)      # GitHub's codes are 20 hex digits
            scopes = tuple(s for s in q.get("scope", "").replace(",", " ").split() if s)
            self._codes[code] = _Code(self.client_id, redirect_uri, scopes, challenge, self.clock())
            params["code"] = code
        else:
            params.update(error="access_denied", error_description="The user has denied your application access.",
                          error_uri="/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/"
                                    "#access-denied")
        if "state" in q:
            params["state"] = q["state"]
        raise web.HTTPFound(_with_query(back, params))

    # -- step 2: the token endpoint ------------------------------------------------------------------------

    async def _access_token(self, request: web.Request) -> web.Response:
        form = {**request.query, **{k: str(v) for k, v in (await request.post()).items()}}
        as_json = self.answer_format == "json" or (
            self.answer_format == "auto" and "application/json" in request.headers.get("Accept", ""))
        answered_as: Literal["json", "form"] = "json" if as_json else "form"
        grant_type = form.get("grant_type") or "authorization_code"
        client_id, secret, client_auth = _client_credentials(request, form)
        try:
            if client_id != self.client_id or secret is None or not hmac.compare_digest(secret, self.client_secret):
                raise _TokenError("incorrect_client_credentials")
            if grant_type == "authorization_code":
                body, grant = self._exchange_code(form)
            elif grant_type == "refresh_token":
                body, grant = self._refresh(form)
            else:
                raise _TokenError("unsupported_grant_type")
        except _TokenError as exc:
            description, uri = TOKEN_ERRORS[exc.error]
            self.grants.append(Grant(grant_type, False, exc.error, client_auth, answered_as, pkce=exc.pkce))
            return _token_answer({"error": exc.error, "error_description": description, "error_uri": uri}, as_json)
        self.grants.append(Grant(grant_type, True, None, client_auth, answered_as, **grant))
        return _token_answer(body, as_json)

    def _exchange_code(self, form: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        entry = self._codes.pop(form.get("code", ""), None)     # single-use, spent even by a failed attempt
        if entry is None or entry.created + CODE_TTL <= self.clock():
            raise _TokenError("bad_verification_code")
        if "redirect_uri" in form and form["redirect_uri"] != (entry.redirect_uri or self.callback_url):
            raise _TokenError("redirect_uri_mismatch")
        pkce: Literal["verified", "failed"] | None = None
        if entry.challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            pkce = "verified" if verifier and hmac.compare_digest(digest, entry.challenge) else "failed"
            if pkce == "failed":
                raise _TokenError("bad_verification_code", pkce)
        body, issued = self._issue(entry.scopes)
        return body, {"pkce": pkce, **issued}

    def _refresh(self, form: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        spent = form.get("refresh_token", "")
        entry = self._refresh_tokens.pop(spent, None) if self.expiring else None
        if entry is None or entry.expires_at <= self.clock():
            raise _TokenError("bad_refresh_token")
        # "Once you use a refresh token, that refresh token and the old user access token will no longer work."
        self._tokens.pop(entry.access_token, None)
        body, issued = self._issue(entry.scopes)
        return body, {"spent_refresh_token": spent, **issued}

    def _issue(self, scopes: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
        now = self.clock()
        access = ("ghu_" if self.expiring else "gho_") + _random(36)
        body: dict[str, Any] = {"access_token": access}
        issued: dict[str, Any] = {"access_token": access}
        if self.expiring:
            refresh = "ghr_" + _random(76)
            self._tokens[access] = _Token(scopes, now + self.expires_in)
            self._refresh_tokens[refresh] = _Refresh(scopes, now + self.refresh_token_expires_in, access)
            body.update(expires_in=self.expires_in, refresh_token=refresh,
                        refresh_token_expires_in=self.refresh_token_expires_in)
            issued["refresh_token"] = refresh
        else:
            self._tokens[access] = _Token(scopes, None)
        body.update(scope=",".join(scopes), token_type=self.token_type)
        return body, issued

    # -- the REST API ----------------------------------------------------------------------------------------

    def _authenticated(self, request: web.Request) -> _Token:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if not credential:
            raise _api_error(401, "Requires authentication")
        token = self._tokens.get(credential.strip()) if scheme.lower() in ("bearer", "token") else None
        if token is None or (token.expires_at is not None and token.expires_at <= self.clock()):
            raise _api_error(401, "Bad credentials")
        return token

    async def _api_user(self, request: web.Request) -> web.Response:
        token = self._authenticated(request)
        return web.json_response(self.user.profile(self.url), headers=_scope_headers(token))

    async def _api_emails(self, request: web.Request) -> web.Response:
        token = self._authenticated(request)
        if not EMAIL_SCOPES & set(token.scopes):
            raise _api_error(404, "Not Found")
        emails = [{"email": e.email, "primary": e.primary, "verified": e.verified, "visibility": e.visibility}
                  for e in self.user.emails]
        return web.json_response(emails, headers=_scope_headers(token))


    async def _api_orgs(self, request: web.Request) -> web.Response:
        """``GET /user/orgs`` (REST "List organizations for the authenticated user"): with ``read:org``
        every membership; without, GitHub lists only public ones (here: none)."""
        token = self._authenticated(request)
        orgs = [{"login": o, "id": 1000 + i, "url": f"{self.url}/api/v3/orgs/{o}"}
                for i, o in enumerate(self.user.orgs)] if "read:org" in token.scopes else []
        return web.json_response(_paged(request, orgs), headers=_scope_headers(token))

    async def _api_teams(self, request: web.Request) -> web.Response:
        """``GET /user/teams``: needs ``read:org`` (else 403, as GitHub answers a token without it)."""
        token = self._authenticated(request)
        if "read:org" not in token.scopes:
            raise web.HTTPForbidden(text=json.dumps({"message": "Resource not accessible by integration"}),
                                    content_type="application/json")
        teams = [{"slug": slug, "name": slug.title(), "organization": {"login": org}}
                 for org, slug in self.user.teams]
        return web.json_response(_paged(request, teams), headers=_scope_headers(token))


def _paged(request: web.Request, items: list[Any]) -> list[Any]:
    """GitHub's ``per_page`` (at most 100) and ``page`` (from 1)."""
    per_page = min(int(request.query.get("per_page", "30")), 100)
    page = int(request.query.get("page", "1"))
    return items[(page - 1) * per_page:page * per_page]


def _client_credentials(request: web.Request,
                        form: dict[str, str]) -> tuple[str | None, str | None, Literal["basic", "post"] | None]:
    """HTTP Basic (both parts form-urlencoded first, RFC 6749 §2.3.1) or the client_id/client_secret fields."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None, None, "basic"
        client_id, _, secret = pair.partition(":")
        return unquote_plus(client_id), unquote_plus(secret), "basic"
    if "client_id" in form:
        return form["client_id"], form.get("client_secret"), "post"
    return None, None, None


def _redirect_allowed(redirect_uri: str, callback_url: str) -> bool:
    """GitHub's rule: same scheme, host and port as the callback URL, and its path or one below it."""
    got, registered = urlsplit(redirect_uri), urlsplit(callback_url)
    if (got.scheme, got.netloc) != (registered.scheme, registered.netloc):
        return False
    base = registered.path.rstrip("/")
    return got.path == registered.path or got.path.startswith(base + "/")


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def _token_answer(body: dict[str, Any], as_json: bool) -> web.Response:
    """HTTP 200 either way, errors included (GitHub's token endpoint)."""
    if as_json:
        return web.json_response(body)
    return web.Response(text=urlencode({k: str(v) for k, v in body.items()}),
                        content_type="application/x-www-form-urlencoded", charset="utf-8")


def _api_error(status: int, message: str) -> web.HTTPException:
    cls = {401: web.HTTPUnauthorized, 404: web.HTTPNotFound}[status]
    body = {"message": message, "documentation_url": _DOCS + "/rest", "status": str(status)}
    return cls(text=web.json_response(body).text, content_type="application/json")


def _scope_headers(token: _Token) -> dict[str, str]:
    return {"X-OAuth-Scopes": ", ".join(token.scopes), "X-Accepted-OAuth-Scopes": "",
            "X-GitHub-Media-Type": "github.v3; format=json"}


def _page(status: int, title: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="text/html",
                        text=f"<!doctype html><title>{title} · GitHub</title><h1>{title}</h1><p>{message}</p>")


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


async def start_github(port: int, *, callback_url: str, client_id: str = CLIENT_ID,
                       client_secret: str = CLIENT_SECRET, user: GitHubUser | None = None,
                       expiring: bool = False, expires_in: int = DEFAULT_EXPIRES_IN,
                       refresh_token_expires_in: int = DEFAULT_REFRESH_TOKEN_EXPIRES_IN,
                       token_type: str = "bearer", answer_format: Literal["auto", "json", "form"] = "auto",
                       approve: bool = True, clock: Callable[[], float] = time.time) -> FakeGitHub:
    """Start the fake on 127.0.0.1:``port`` with one OAuth app whose callback URL is ``callback_url``.

    ``expiring`` switches to GitHub App user tokens that expire after ``expires_in`` seconds;
    ``token_type`` and ``answer_format`` ("json"/"form" ignore ``Accept``) exist to misbehave on demand;
    ``approve=False`` makes the user deny access. The caller must ``await github.close()``.
    """
    github = FakeGitHub(url=f"http://127.0.0.1:{port}", client_id=client_id, client_secret=client_secret,
                        callback_url=callback_url, user=user or GitHubUser(), expiring=expiring,
                        expires_in=expires_in, refresh_token_expires_in=refresh_token_expires_in,
                        token_type=token_type, answer_format=answer_format, approve=approve, clock=clock)
    runner = web.AppRunner(github.app(), access_log=None)
    await runner.setup()
    github._runner = runner
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except BaseException:
        await github.close()
        raise
    return github


__all__ = ["CLIENT_ID", "CLIENT_SECRET", "PRIMARY_EMAIL", "Email", "FakeGitHub", "GitHubUser", "Grant",
           "SeenRequest", "start_github"]
