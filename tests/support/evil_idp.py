"""A small OpenID provider that misbehaves on demand, started on a free loopback port.

The real ``oidc-provider`` (tests/support/idp.py) is the reference for the flows; it will not sign a token
with the wrong key or forget the nonce when asked. This one will. It implements just enough of OpenID
Connect for authproxy — discovery (Discovery 1.0 §4), JWKS, an ``/authorize`` that approves at once and
redirects straight back with ``code``, ``state`` and ``iss`` (RFC 9207), ``/token`` (authorization_code
with PKCE S256, refresh_token), ``/userinfo`` and ``/end_session`` — and a test sets ``idp.mode`` to one of
``MODES`` to make the next answers wrong in one way, in the spirit of the OpenID Connect RP certification
tests (``rp-id_token-*``, ``rp-userinfo-bad-sub-claim``, ``rp-key-rotation-*``) and RFC 9700 §4.4 (mix-up).

Like a real provider, and unlike what a lenient fake would do, it is strict with the client: codes are
single-use (a replayed code is ``invalid_grant`` and revokes the tokens issued from it, RFC 6749 §4.1.2),
PKCE is checked, the redirect URI must be registered and the client must authenticate. So a test that
replays a code learns what the proxy does, not what a forgiving fake allows.

Everything received is recorded in ``requests`` (path and query/form, secrets redacted) and every token
grant in ``grants``, so tests can assert on what the proxy actually sent.

``start_evil_stack()`` starts the whole picture a test needs: this provider, an echo upstream
(tests/support/echo.py) and authproxy in-process (tests/support/proxyrun.py) configured for them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.echo import EchoServer, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET
from tests.support.ports import free_port
from tests.support.proxyrun import RunningProxy, config_dict, start_proxy

# Seconds an ID token is valid for when the mode does not say otherwise.
ID_TOKEN_TTL = 300
# Seconds an access token is valid for (``expires_in``); tests shorten it to exercise refresh.
ACCESS_TOKEN_TTL = 3600
# Where an ID token's ``exp`` lands in mode "exp_past", and ``iat`` in "iat_future": far beyond any sane skew.
FAR = 3600
# Form fields never kept in the request log.
SECRET_FIELDS = frozenset({"client_secret", "code", "code_verifier", "refresh_token"})

# What the ID token in the token response does wrong (OpenID Connect Core §3.1.3.7, one rule each).
BAD_ID_TOKEN_MODES = {
    "unknown_key": "signed with a key that is not in the JWKS (kid 'unknown')",
    "alg_none": 'unsigned: header {"alg": "none"}',
    "hs256_client_secret": "HS256 with the client secret as key, while the JWKS holds RSA keys",
    "iss_mismatch": "iss is another issuer",
    "aud_other": "aud does not contain the client",
    "multi_aud_no_azp": "aud lists the client and another party, and there is no azp",
    "nonce_missing": "no nonce claim",
    "nonce_wrong": "a nonce other than the one sent",
    "exp_past": "exp is an hour ago",
    "iat_missing": "no iat claim",
    "iat_future": "iat is an hour from now",
    "sub_missing": "no sub claim",
    "kid_absent_two_keys": "no kid in the header, and two RSA keys in the JWKS",
}
# Everything else that can go wrong.
OTHER_BAD_MODES = {
    "userinfo_sub_mismatch": "userinfo names another sub than the ID token",
    "auth_response_iss_mismatch": "the authorization response's iss (RFC 9207) is another issuer",
    "auth_response_iss_missing": "the authorization response has no iss although discovery says it is supported",
    "token_http_500": "the token endpoint answers HTTP 500",
    "token_html": "the token endpoint answers 200 with an HTML page",
    "token_invalid_json": "the token endpoint answers 200 application/json that is not JSON",
    "token_type_mac": 'the token response says token_type "mac"',
    "discovery_issuer_mismatch": "the discovery document names another issuer than the one it is served for",
    # JSON nested deeper than any parser's recursion limit: one mode per endpoint whose JSON the proxy reads.
    "discovery_nested_json": "the discovery document is 100,000 nested arrays",
    "jwks_nested_json": "the JWKS is 100,000 nested arrays",
    "token_nested_json": "the token endpoint answers 200 with 100,000 nested arrays",
    "userinfo_nested_json": "the userinfo endpoint answers 200 with 100,000 nested arrays",
}
# How deep the nested-JSON modes nest: far beyond CPython's recursion limit, well under 1 MiB.
NESTING = 100_000
# Misbehaviours a client should accept.
ACCEPTABLE_MODES = {
    "good": "a correct provider",
    "kid_absent_one_key": "no kid in the header, and exactly one key in the JWKS",
}
MODES = frozenset(BAD_ID_TOKEN_MODES) | frozenset(OTHER_BAD_MODES) | frozenset(ACCEPTABLE_MODES)
BAD_MODES = frozenset(BAD_ID_TOKEN_MODES) | frozenset(OTHER_BAD_MODES)


@functools.cache
def rsa_key(kid: str) -> RSAKey:
    """A private RSA key named ``kid``, made once per test run (2048-bit key generation is not free)."""
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class SeenRequest:
    method: str
    path: str
    params: dict[str, str]


@dataclass
class Grant:
    """One token-endpoint call: its grant type, and the OAuth error it got, if any."""

    grant_type: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Code:
    sub: str
    nonce: str | None
    challenge: str
    redirect_uri: str
    used: bool = False
    tokens: list[str] = field(default_factory=list)      # access and refresh tokens issued from it


@dataclass
class _Token:
    sub: str
    revoked: bool = False


class _OAuthError(Exception):
    def __init__(self, error: str, status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


class EvilIdP:
    """One client (``client_id``/``client_secret``) registered with ``redirect_uris``; see the module docstring."""

    def __init__(self, *, url: str, client_id: str, client_secret: str, redirect_uris: list[str],
                 post_logout_redirect_uris: list[str], end_session: bool, user: str,
                 clock: Callable[[], float]) -> None:
        self.url = url
        self.issuer = url
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.post_logout_redirect_uris = post_logout_redirect_uris
        self.end_session = end_session
        self.user = user                       # the sub of whoever "signs in" next
        self.expires_in = ACCESS_TOKEN_TTL
        self.refresh_id_token = False          # whether refresh answers carry a new ID token
        self.extra_claims: dict[str, Any] = {}
        self.claims_of: dict[str, dict[str, Any]] = {}   # more claims for one account (by sub); None drops one
        self.userinfo_extra: dict[str, Any] = {}          # claims only userinfo carries (not the ID token)
        self.clock = clock
        self.requests: list[SeenRequest] = []
        self.grants: list[Grant] = []
        self._mode = "good"
        self._signing_kid = "evil-1"
        self._published = ["evil-1"]
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}
        self._runner: web.AppRunner | None = None

    # -- what tests change -----------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; one of {sorted(MODES)}")
        self._mode = value

    def rotate_signing_key(self, kid: str) -> None:
        """Sign with a new key from now on and publish only it (the old key is withdrawn)."""
        self._signing_kid = kid
        self._published = [kid]

    def count_grants(self, grant_type: str, ok: bool | None = True) -> int:
        return sum(1 for g in self.grants if g.grant_type == grant_type and (ok is None or g.ok is ok))

    def requests_to(self, path: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path == path]

    # -- life cycle ----------------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_route("*", "/userinfo", self._userinfo)
        app.router.add_get("/end_session", self._end_session)
        return app

    # -- endpoints ----------------------------------------------------------------------------------------

    def _record(self, request: web.Request, params: dict[str, str]) -> None:
        kept = {k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in params.items()}
        self.requests.append(SeenRequest(request.method, request.path, kept))

    def _nested_json(self, endpoint: str) -> web.Response | None:
        """In mode "<endpoint>_nested_json", the answer: a JSON value nested ``NESTING`` deep."""
        if self._mode != f"{endpoint}_nested_json":
            return None
        return web.Response(text="[" * NESTING + "]" * NESTING, content_type="application/json")

    async def _discovery(self, request: web.Request) -> web.Response:
        self._record(request, dict(request.query))
        if (nested := self._nested_json("discovery")) is not None:
            return nested
        issuer = self.issuer + "/other" if self._mode == "discovery_issuer_mismatch" else self.issuer
        doc: dict[str, Any] = {
            "issuer": issuer,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "userinfo_endpoint": self.url + "/userinfo",
            "jwks_uri": self.url + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "authorization_response_iss_parameter_supported": True,
        }
        if self.end_session:
            doc["end_session_endpoint"] = self.url + "/end_session"
        return web.json_response(doc)

    async def _jwks(self, request: web.Request) -> web.Response:
        self._record(request, {})
        if (nested := self._nested_json("jwks")) is not None:
            return nested
        kids = list(self._published)
        if self._mode == "kid_absent_two_keys":
            kids = [self._signing_kid, "evil-2" if self._signing_kid != "evil-2" else "evil-1"]
        keys = [rsa_key(kid).as_dict(private=False) for kid in kids]
        return web.json_response({"keys": keys}, content_type="application/jwk-set+json")

    async def _authorize(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self._record(request, q)
        if q.get("client_id") != self.client_id:
            return _page(400, "Unknown client", "client_id is not registered.")
        if q.get("redirect_uri") not in self.redirect_uris:
            return _page(400, "Bad redirect_uri", "redirect_uri is not registered; not redirecting there.")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" \
                or not q.get("code_challenge") or "openid" not in q.get("scope", "").split():
            return _page(400, "Bad request", "response_type=code, scope openid and PKCE S256 are required.")
        code = _random()
        self._codes[code] = _Code(sub=self.user, nonce=q.get("nonce"), challenge=q["code_challenge"],
                                  redirect_uri=q["redirect_uri"])
        answer = {"code": code}
        if "state" in q:
            answer["state"] = q["state"]
        if self._mode == "auth_response_iss_mismatch":
            answer["iss"] = "https://evil.example"
        elif self._mode != "auth_response_iss_missing":
            answer["iss"] = self.issuer
        raise web.HTTPFound(_with_query(q["redirect_uri"], answer))

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self._record(request, form)
        grant = Grant(form.get("grant_type", ""))
        self.grants.append(grant)
        if self._mode == "token_http_500":
            return web.Response(status=500, text="<h1>Internal Server Error</h1>", content_type="text/html")
        if self._mode == "token_html":
            return web.Response(text="<!doctype html><title>Sign in</title><form></form>", content_type="text/html")
        if self._mode == "token_invalid_json":
            return web.Response(text='{"access_token": "a", "token_type": ', content_type="application/json")
        if (nested := self._nested_json("token")) is not None:
            return nested
        try:
            self._authenticate_client(request, form)
            if grant.grant_type == "authorization_code":
                body = self._exchange_code(form)
            elif grant.grant_type == "refresh_token":
                body = self._refresh_grant(form)
            else:
                raise _OAuthError("unsupported_grant_type")
        except _OAuthError as exc:
            grant.error = exc.error
            return web.json_response({"error": exc.error}, status=exc.status, headers={"Cache-Control": "no-store"})
        if self._mode == "token_type_mac":
            body["token_type"] = "mac"
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _authenticate_client(self, request: web.Request, form: dict[str, str]) -> None:
        """client_secret_basic or client_secret_post (RFC 6749 §2.3.1)."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                raise _OAuthError("invalid_client", 401) from None
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if client_id != self.client_id or not hmac.compare_digest(secret, self.client_secret):
            raise _OAuthError("invalid_client", 401)

    def _exchange_code(self, form: dict[str, str]) -> dict[str, Any]:
        code = self._codes.get(form.get("code", ""))
        if code is None:
            raise _OAuthError("invalid_grant")
        if code.used:
            # RFC 6749 §4.1.2: a code used twice is an attack; revoke what it gave the first time.
            for token in code.tokens:
                for store in (self._access, self._refresh):
                    if token in store:
                        store[token].revoked = True
            raise _OAuthError("invalid_grant")
        code.used = True
        if form.get("redirect_uri") != code.redirect_uri:
            raise _OAuthError("invalid_grant")
        verifier = form.get("code_verifier", "")
        if not verifier or b64url(hashlib.sha256(verifier.encode()).digest()) != code.challenge:
            raise _OAuthError("invalid_grant")
        body = self._issue(code.sub)
        code.tokens += [body["access_token"], body["refresh_token"]]
        body["id_token"] = self.id_token(code.sub, code.nonce)
        return body

    def _refresh_grant(self, form: dict[str, str]) -> dict[str, Any]:
        token = self._refresh.get(form.get("refresh_token", ""))
        if token is None or token.revoked:
            raise _OAuthError("invalid_grant")
        body = self._issue(token.sub, refresh_token=form["refresh_token"])
        if self.refresh_id_token:
            body["id_token"] = self.id_token(token.sub, None)
        return body

    def _issue(self, sub: str, refresh_token: str | None = None) -> dict[str, Any]:
        access = "evil-at-" + _random()
        self._access[access] = _Token(sub)
        if refresh_token is None:
            refresh_token = "evil-rt-" + _random()
            self._refresh[refresh_token] = _Token(sub)
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in,
                "refresh_token": refresh_token, "scope": "openid email profile"}

    async def _userinfo(self, request: web.Request) -> web.Response:
        self._record(request, {})
        auth = request.headers.get("Authorization", "")
        token = self._access.get(auth[7:]) if auth.startswith("Bearer ") else None
        if token is None or token.revoked:
            return web.json_response({"error": "invalid_token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if (nested := self._nested_json("userinfo")) is not None:
            return nested
        sub = "mallory" if self._mode == "userinfo_sub_mismatch" else token.sub
        return web.json_response({**self.profile(sub), **self.userinfo_extra})

    async def _end_session(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self._record(request, q)
        target = q.get("post_logout_redirect_uri")
        if target is None:
            return _page(200, "Signed out", "You are signed out.")
        if target not in self.post_logout_redirect_uris:
            return _page(400, "Bad post_logout_redirect_uri", "Not registered; not redirecting there.")
        raise web.HTTPFound(_with_query(target, {"state": q["state"]} if "state" in q else {}))

    # -- the ID token -------------------------------------------------------------------------------------

    def profile(self, sub: str) -> dict[str, Any]:
        claims = {"sub": sub, "email": f"{sub}@example.test", "email_verified": True,
                  "preferred_username": sub, "name": sub.title(), "groups": ["staff"], **self.extra_claims,
                  **self.claims_of.get(sub, {})}
        return {name: value for name, value in claims.items() if value is not None}

    def id_token(self, sub: str, nonce: str | None) -> str:
        """An ID token for ``sub``, wrong in the way the current mode says."""
        mode, now = self._mode, int(self.clock())
        claims: dict[str, Any] = {**self.profile(sub), "iss": self.issuer, "aud": self.client_id,
                                  "exp": now + ID_TOKEN_TTL, "iat": now, "auth_time": now}
        if nonce is not None:
            claims["nonce"] = nonce
        changes: dict[str, Any] = {
            "iss_mismatch": {"iss": "https://evil.example"},
            "aud_other": {"aud": "someone-else"},
            "multi_aud_no_azp": {"aud": [self.client_id, "someone-else"]},
            "nonce_missing": {"nonce": None},
            "nonce_wrong": {"nonce": "not-the-nonce-that-was-sent"},
            "exp_past": {"exp": now - FAR, "iat": now - FAR - ID_TOKEN_TTL},
            "iat_missing": {"iat": None},
            "iat_future": {"iat": now + FAR},
            "sub_missing": {"sub": None},
        }.get(mode, {})
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        if mode == "alg_none":
            return _compact({"alg": "none", "typ": "JWT"}, claims, lambda _: b"")
        if mode == "hs256_client_secret":
            secret = self.client_secret.encode()
            return _compact({"alg": "HS256", "typ": "JWT", "kid": self._signing_kid}, claims,
                            lambda data: hmac.new(secret, data, hashlib.sha256).digest())
        key = rsa_key("unknown") if mode == "unknown_key" else rsa_key(self._signing_kid)
        header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
        if mode not in ("kid_absent_two_keys", "kid_absent_one_key"):
            header["kid"] = key.kid
        return jwt.encode(header, claims, key)


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS compact serialisation made by hand, for algorithms a JOSE library rightly refuses to produce."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def _with_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params) if params else url


def _page(status: int, title: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="text/html",
                        text=f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{message}</p>")


def _random() -> str:
    return secrets.token_urlsafe(24)


async def start_evil_idp(port: int, *, client_id: str, client_secret: str, redirect_uris: list[str],
                         post_logout_redirect_uris: list[str] | None = None, end_session: bool = True,
                         user: str = "alice", clock: Callable[[], float] = time.time) -> EvilIdP:
    """Start the provider on 127.0.0.1:``port``, issuer ``http://127.0.0.1:<port>``, in mode "good".

    ``end_session=False`` leaves ``end_session_endpoint`` out of discovery (the proxy then signs out
    locally and honours ``rd``). The caller must ``await idp.close()``.
    """
    idp = EvilIdP(url=f"http://127.0.0.1:{port}", client_id=client_id, client_secret=client_secret,
                  redirect_uris=list(redirect_uris), post_logout_redirect_uris=list(post_logout_redirect_uris or []),
                  end_session=end_session, user=user, clock=clock)
    runner = web.AppRunner(idp.app(), access_log=None)
    await runner.setup()
    idp._runner = runner
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except BaseException:
        await idp.close()
        raise
    return idp




# -- the whole stack: this provider, an echo upstream and authproxy ------------------------------------------


@dataclass
class EvilStack:
    idp: EvilIdP
    echo: EchoServer
    proxy: RunningProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    async def close(self) -> None:
        await self.proxy.close()
        await self.echo.close()
        await self.idp.close()


async def start_evil_stack(*, mode: str = "good", provider: dict[str, Any] | None = None, end_session: bool = True,
                           wait_ready: bool = True, clock: Callable[[], float] | None = None,
                           **sections: Any) -> EvilStack:
    """authproxy in front of an echo upstream, signing in at an ``EvilIdP`` already in ``mode`` when the proxy
    starts (so even its first discovery request sees it).

    The proxy's ``provider`` section is replaced whole (issuer, client, scopes without offline_access or
    prompt), then ``provider`` is merged over it; other ``sections`` merge as in ``proxyrun.config_dict``.
    ``wait_ready=False`` returns before the proxy has loaded the provider's metadata.
    """
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_evil_idp(free_port(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                               redirect_uris=[public + "/oauth2/callback"],
                               post_logout_redirect_uris=[public + "/oauth2/signed_out"], end_session=end_session)
    idp.mode = mode
    echo: EchoServer | None = None
    try:
        echo = await start_echo(free_port())
        data = config_dict(port=port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                           client_secret=CLIENT_SECRET, **sections)
        data["provider"] = {"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                            "scopes": ["openid", "email", "profile"], **(provider or {})}
        proxy = await start_proxy(data, wait_ready=wait_ready, **({"clock": clock} if clock else {}))
    except BaseException:
        if echo is not None:
            await echo.close()
        await idp.close()
        raise
    return EvilStack(idp=idp, echo=echo, proxy=proxy)


__all__ = [
    "ACCEPTABLE_MODES",
    "BAD_ID_TOKEN_MODES",
    "BAD_MODES",
    "MODES",
    "NESTING",
    "OTHER_BAD_MODES",
    "EvilIdP",
    "EvilStack",
    "Grant",
    "SeenRequest",
    "rsa_key",
    "start_evil_idp",
    "start_evil_stack",
]
