"""``/oauth2/auth``: the check an ingress makes before each request ("may this request pass?").

One authproxy answers nginx ``auth_request``, Traefik ``forwardAuth``, Caddy ``forward_auth``, Envoy
``ext_authz`` (HTTP) and HAProxy (its ``auth-request`` Lua action). The operator picks the form of the
endpoint in the ingress's own configuration, where no client can change it:

- ``/oauth2/auth``: 202 with the identity headers, 401 without a session, 403 when the rules refuse.
  For nginx, which can only act on 2xx, 401 and 403 (its ``error_page 401`` hands the request to us).
- ``/oauth2/auth/<name>``: the same, with the rule set ``forward_auth.rule_sets[name]`` checked on top
  of the global ``authorization``. An unknown name is a 404 (fail closed: nginx turns it into a 500).
- ``…/redirect`` (``/oauth2/auth/redirect``, ``/oauth2/auth/<name>/redirect``): for an ingress that
  passes our answer to the client (Traefik, Caddy, HAProxy): a browser navigation without a session
  gets a 302 to ``/oauth2/start`` with ``rd`` set to the original URL on its own host; anything else
  a 401 with a JSON ``login_url``.
- ``…/envoy/<original path>``: Envoy's ``path_prefix`` form (``/oauth2/auth/envoy``, or with a rule set
  ``/oauth2/auth/<name>/envoy``): Envoy appends the original path and query to the prefix and sends the
  original method and ``Host``; it passes our answer on, so sessionless navigations are redirected too.

The check's own **query is never read as rules.** Caddy passes the original request's query to the
check (its ``uri`` rewrite keeps it), and Envoy's form carries it too: reading it once made every app
URL with a query a 400, and would let a client pick the rules. Rules per location are rule sets named
in the path. A query naming a former rule parameter (``?allowed_groups=``) on a check that brings no
original URI from a trusted proxy is refused (400): that is an nginx location written for the old
form, and ignoring it would let everyone in where it meant to restrict.

**The original request** (method, scheme, host, path and query) comes from the ingress's headers —
``X-Forwarded-Method/-Proto/-Host/-Uri`` (Traefik, Caddy; nginx and HAProxy when told), or
``X-Original-URL`` with ``X-Original-Method`` (our nginx example), or ``X-Original-URI`` — or, for Envoy,
from the path, method and ``Host`` of the check itself. They are believed only from ``trusted_proxies``
(anyone else could claim any path or host), and the path is normalised as a proxied request's is
(``paths.py``: an ambiguous one is a 400). From anyone else the original is unknown: expressions on the
request see empty strings (and deny), and a sign-in returns to ``public_url``.

**Step-up** (``stepup.py``): the global rules and the rule set may ask for an ``acr`` and a recent sign-in.
A session that falls short is answered as one without a session is, with what to ask for: where the
ingress passes the answer on, a browser's page load is redirected to ``/oauth2/start`` with the step-up
sealed in the link, and anything else gets a 401 whose ``WWW-Authenticate`` is RFC 9470's
``insufficient_user_authentication`` (and a JSON ``login_url``). For nginx, a bare **403** with that
header, not a 401: nginx hands a 401 to its ``error_page 401`` location, which passes the original request to
authproxy as the proxy, where the session is signed in and the rule set unknown — the step-up would be skipped.

On success the answer carries ``X-Forwarded-User``, ``-Email``, ``-Preferred-Username``, ``-Groups``
(``headers.identity_headers``) and the same as oauth2-proxy names them, ``X-Auth-Request-User``,
``-Email``, ``-Preferred-Username``, ``-Groups`` (always, empty when unknown, so a copied one always replaces
the client's), and ``-Access-Token`` with ``forward_auth.access_token``, so an ingress configuration written
for oauth2-proxy keeps working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from .authz import QUERY_RULES, Asked, authorize_all, rules_for
from .config import AuthorizationConfig, Config
from .context import CONFIG, REQUEST_ID, SEALER
from .errors import BadQueryRules, BadRequest, Forbidden, NotFound, StepUpRequired, Unauthenticated
from .gate import host_name, identify, step_up_needed
from .headers import identity_headers
from .identity import safe
from .login import is_navigation
from .metrics import METRICS
from .model import Session
from .pages import NO_STORE
from .paths import match_key, normalize_path
from .stepup import requirement, sign_in_parameters, step_up_query
from .upstream import FORWARDER

ENDPOINT = "/oauth2/auth"
# The endpoint's own words after ``/oauth2/auth[/<name>]`` (``config.RESERVED_RULE_SET_NAMES``).
REDIRECT, ENVOY = "redirect", "envoy"
# A host as an ingress may report it: a name or IPv4 address, or a bracketed IPv6 one, with a port. Nothing
# else goes into a ``Location`` or a policy's ``host``.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
# An HTTP method is a token (RFC 9110 §9.1); anything else is no method.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Which form of ``/oauth2/auth`` the ingress asked."""

    rule_set: str | None = None
    redirect: bool = False
    envoy_target: str | None = None     # Envoy: the original path and query, as they followed the prefix


@dataclass(frozen=True, slots=True)
class Original:
    """The request the ingress asks about, normalised: ``path`` is the match key, ``target`` the
    normalised path with the original query (for the way back after signing in)."""

    method: str
    scheme: str
    host: str
    path: str
    target: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


def parse_endpoint(raw_path: str, config: Config) -> Endpoint:
    """The form of ``raw_path`` (``/oauth2/auth…``, as sent); NotFound for any other."""
    path, question, query = raw_path.partition("?")
    rest = path[len(ENDPOINT):]
    if rest == "":
        return Endpoint()
    if not rest.startswith("/"):
        raise NotFound("This path belongs to the sign-in proxy and does not exist.")
    word, _, remainder = rest[1:].partition("/")
    rule_set = None
    if word not in (REDIRECT, ENVOY):
        if config.forward_auth.rule_set(word) is None:
            raise NotFound(f"No rule set is named {word[:64]!r} (forward_auth.rule_sets).")
        rule_set = word
        if not remainder:
            return Endpoint(rule_set)
        word, _, remainder = remainder.partition("/")
    if word == REDIRECT and not remainder and not rest.endswith("/"):
        return Endpoint(rule_set, redirect=True)
    if word == ENVOY and (remainder or rest.endswith("/")):
        return Endpoint(rule_set, redirect=True, envoy_target="/" + remainder + question + query)
    raise NotFound("This path belongs to the sign-in proxy and does not exist.")


def original_request(request: web.Request, endpoint: Endpoint, config: Config) -> Original | None:
    """The request the ingress asks about, from a trusted proxy's headers (or Envoy's path); else None."""
    if request.remote is None or not request.app[FORWARDER].headers.is_trusted(request.remote):
        return None
    h = request.headers
    public = urlsplit(config.public_url)
    method: str
    scheme: str | None
    if endpoint.envoy_target is not None:
        method, scheme, host, uri = request.method, h.get("X-Forwarded-Proto"), request.host, endpoint.envoy_target
    elif "X-Forwarded-Uri" in h:
        method, scheme, uri = h.get("X-Forwarded-Method", ""), h.get("X-Forwarded-Proto"), h["X-Forwarded-Uri"]
        host = h.get("X-Forwarded-Host") or request.host
    elif "X-Original-URL" in h:
        method, uri = h.get("X-Original-Method") or h.get("X-Forwarded-Method") or "", h["X-Original-URL"]
        parts = urlsplit(uri) if not uri.startswith("/") else None
        if parts is not None:
            if not parts.scheme or not parts.netloc or "@" in parts.netloc:
                raise BadRequest("X-Original-URL is neither a path nor an http(s) URL.")
            scheme, host = parts.scheme, parts.netloc
            uri = uri[len(parts.scheme) + 3 + len(parts.netloc):] or "/"
        else:
            scheme, host = h.get("X-Forwarded-Proto"), h.get("X-Forwarded-Host") or request.host
    elif "X-Original-URI" in h:
        method, scheme, uri = h.get("X-Original-Method") or h.get("X-Forwarded-Method") or "", \
            h.get("X-Forwarded-Proto"), h["X-Original-URI"]
        host = h.get("X-Forwarded-Host") or request.host
    else:
        return None
    return _normalised(method, scheme or public.scheme, host, uri)


def _normalised(method: str, scheme: str, host: str, uri: str) -> Original:
    """The parts checked and normalised as a proxied request's: BadRequest for what cannot be one."""
    host = host.split(",", 1)[0].strip().lower()        # a list: the first proxy saw the client's
    if not _HOST.fullmatch(host):
        raise BadRequest("The forwarded host is not a host name.")
    scheme = scheme.split(",", 1)[0].strip().lower()
    if scheme not in ("http", "https"):
        raise BadRequest("The forwarded scheme is neither http nor https.")
    uri = uri.split("#", 1)[0]
    if not uri.startswith("/"):
        raise BadRequest("The forwarded URI is not a path.")
    raw_path, question, query = uri.partition("?")
    path = normalize_path(raw_path)                        # an ambiguous path: a 400, as when proxied
    method = method.strip().upper()
    return Original(method if _METHOD.fullmatch(method) else "", scheme, host, match_key(path),
                    path + question + query)


def _rule_sets(request: web.Request, config: Config, endpoint: Endpoint,
               original: Original | None) -> tuple[AuthorizationConfig, ...]:
    """The global rules — or, for an original request on a host an upstream names (``upstreams[].host``), that
    upstream's, as when proxied — and the rule set the path names."""
    base = config.authorization
    if original is not None:
        upstream = request.app[FORWARDER].route(original.path, host_name(original.host))
        if upstream is not None and upstream.config.host is not None:
            base = rules_for(config, upstream.config)
    named = config.forward_auth.rule_set(endpoint.rule_set) if endpoint.rule_set else None
    return (base,) if named is None else (base, named)


def _sign_in(request: web.Request, config: Config, endpoint: Endpoint, original: Original | None,
             rule_sets: tuple[AuthorizationConfig, ...]) -> Unauthenticated:
    """Nobody signed in: a bare 401 for nginx; where the ingress passes the answer on, a redirect for a
    browser's page load and a 401 with the ``login_url`` for anything else — asking at once for what the
    rules' step-up needs, if they ask anything."""
    if not endpoint.redirect:
        return Unauthenticated()
    needed = requirement(rule_sets)
    parameters = sign_in_parameters(needed, config.provider.extra_authorize_params.get("prompt")) if needed else None
    url, loads_page = _login(request, config, original, parameters)
    return Unauthenticated(login_url=url, redirect=loads_page)


def _login(request: web.Request, config: Config, original: Original | None,
           step_up: dict[str, str] | None) -> tuple[str, bool]:
    """Where a sign-in starts for the original request (its URL to come back to), and whether this is a
    browser's page load that may be sent there."""
    query = {"rd": original.url if original is not None else "/"}
    if step_up:
        query["step_up"] = step_up_query(request.app[SEALER], step_up)
    loads_page = is_navigation(request) and (original is None or original.method in ("GET", "HEAD"))
    return config.public_url + "/oauth2/start?" + urlencode(query), loads_page


def _step_up(request: web.Request, config: Config, endpoint: Endpoint, original: Original | None,
             refusal: StepUpRequired) -> StepUpRequired:
    """A step-up as the endpoint's form answers it: for an ingress that passes the answer on, where to sign
    in again (a redirect for a browser's page load); for nginx, a bare 403 with RFC 9470's challenge."""
    if endpoint.redirect:
        refusal.login_url, loads_page = _login(request, config, original, refusal.parameters)
        refusal.redirect = loads_page and not refusal.bearer
    return refusal


def answer_headers(session: Session, config: Config) -> dict[str, str]:
    """The identity for the ingress to copy: ours and oauth2-proxy's names (``X-Auth-Request-*``)."""
    headers = identity_headers(session)
    ident = session.identity
    # Always all four, empty when the user has none: an ingress that copies a header only when the answer
    # has it (Envoy, HAProxy, some Caddy versions) would otherwise leave the client's own copy in place.
    headers["X-Auth-Request-User"] = ident.sub
    headers["X-Auth-Request-Email"] = ident.email or ""
    headers["X-Auth-Request-Preferred-Username"] = ident.preferred_username or ""
    headers["X-Auth-Request-Groups"] = ",".join(ident.groups)
    # A value no header may carry as it is (CR, LF, controls, bidi, edge spaces: identity.safe) is sent
    # empty, never encoded or cut: the same rule as the headers sent to apps.
    headers = {name: value if not value or safe(value) else "" for name, value in headers.items()}
    if config.forward_auth.access_token and session.access_token:
        headers["X-Auth-Request-Access-Token"] = session.access_token
    return headers


async def handle_auth(request: web.Request) -> web.Response:
    """202 with the identity headers; refusals are raised and answered by the boundary (``boundary.py``)."""
    config = request.app[CONFIG]
    endpoint = parse_endpoint(request.raw_path, config)
    original = original_request(request, endpoint, config)
    if original is None and endpoint.envoy_target is None and any(name in request.query for name in QUERY_RULES):
        raise BadQueryRules("rules in the query are no longer read (a client could add them through an ingress "
                            "that passes its query); name a rule set in the path instead: /oauth2/auth/<name> "
                            "with forward_auth.rule_sets")
    session = await identify(request)
    rule_sets = _rule_sets(request, config, endpoint, original)
    if session is None:
        raise _sign_in(request, config, endpoint, original, rule_sets)
    asked = Asked(original.method, original.path, original.host) if original is not None else None
    decision = authorize_all(session.identity, rule_sets, asked)
    if not decision.allowed:
        where = ENDPOINT + (f"/{endpoint.rule_set}" if endpoint.rule_set else "")
        request.app[METRICS].refused(session.identity.sub, f"{where}: {decision.reason}", request[REQUEST_ID])
        raise Forbidden(session.identity)
    refusal = step_up_needed(request, session, rule_sets, None)
    if isinstance(refusal, StepUpRequired):
        raise _step_up(request, config, endpoint, original, refusal)
    if refusal is not None:
        raise refusal
    return web.Response(status=202, headers={**NO_STORE, **answer_headers(session, config)})
