"""authproxy: an authenticating reverse proxy for apps that have no login of their own.

A browser without a session is sent through the OAuth 2.0 authorization-code flow (with PKCE, state
and, for OpenID Connect, a nonce); the callback exchanges the code, verifies the ID token and seals
the tokens into an encrypted, authenticated cookie. Every later request is opened from that cookie,
refreshed when due, and forwarded to the upstream app with ``Authorization: Bearer`` and identity
headers, streaming both ways.

The modules each own one boundary, listed in the order a request meets them:

- ``__main__``, ``server``, ``supervisor``  the command line; one process (signals, reloads, uvloop);
  ``workers: N`` (forking, replacing, resizing) and the host coordinator process;
- ``connections``  per-connection limits on aiohttp's server (timeouts, max connections);
  ``express``   the express lane: a signed-in GET served from its head's bytes, past aiohttp's request
  machinery (everything it declines goes on to aiohttp unchanged);
  ``tls``  https on the listener: the certificate, reloaded while serving; the plain-HTTP redirect;
- ``app``       wiring only: middleware order, routes; ``resources`` the long-lived clients and stores
  (``cleanup_ctx``); ``context`` the typed app keys; ``health`` ``/ping`` and ``/ready``;
- ``boundary``  the one place errors become HTTP: request id, access log, metrics, and every domain
  error (``errors``, the one exception tree) turned into a page, JSON, a redirect or a bare status;
- ``paths``     the one decoding of a request path: what is forwarded, what rules match, what is a 400;
- ``gate``      what every non-``/oauth2/`` request passes: skip rules, authentication, refresh, authorization;
- ``forward_auth``  ``/oauth2/auth``: an ingress's check (nginx, Traefik, Caddy, Envoy, HAProxy) on the
  original request its trusted headers describe, with rule sets named in the path;
- ``authz``, ``policy``  who may pass: allow-lists, CEL expressions with their tests; CORS for our answers;
  ``stepup``  how recently and strongly the user must have signed in for a route (``acr``, ``auth_time``);
- ``session``   the session on a request's path: loaded when asked, its cookie written as headers go out;
- ``cookies``   the cookie format: sealed, chunked, cached on the way in; ``Set-Cookie`` values;
- ``store``, ``redis_store``  where sessions live: the cookie (default) or Redis (ciphertext only);
- ``model``     the Session value: who the user is and their tokens, nothing about HTTP;
- ``crypto``    the only user of ``cryptography``: sealing, random values, PKCE, derived signing keys;
- ``refresh``   refreshing tokens once per session and expiry, a sent grant seen through;
  ``host``, ``coordinator``  what the workers of one host share (locks, results, ends);
- ``ending``    the one way a session ends: recorded in the store, applied here, fanned out;
  ``backchannel``  OpenID back-channel logout tokens in; ``frontchannel`` the provider's logout iframe;
- ``login``, ``redirects``  the ``/oauth2/*`` sign-in and sign-out endpoints; the safe-redirect guard;
  ``authorize_params`` the sign-in parameters a link may pass, and the ID token's answer to them;
- ``provider/`` the only code that talks to the identity provider: ``client`` (the one HTTP call),
  ``metadata`` (discovery), ``keys`` (JWKS), ``clientauth`` (how we authenticate), ``grants``,
  ``userinfo``, ``online`` (``--check-config --online``), and what single providers do their own way:
  ``graph`` (Entra ID groups that overflow the token), ``google`` (the Workspace domain ``hd``),
  ``zitadel`` (its role claim as groups); ``presets`` per-provider defaults;
- ``tokens``    the one JWT validator (ID, access, logout tokens); ``bearer`` API clients' own bearer JWTs;
- ``headers``   the header policy: what the client may send on, what the proxy sets, what comes back;
  ``identity``  per upstream, what the app is told about the user: header templates, tokens, assertion;
- ``assertion`` signed identity assertions for the app (ES256, published at ``/oauth2/jwks``);
- ``websocket`` the client's side of an authenticated WebSocket: checks, the session's holds and watch;
- ``upstream/`` the only code that talks to the app: ``forward`` (routing, forwarding), ``http1*``
  (the lean HTTP/1.1 client), ``relay`` (the answer back: whole, streamed, batched or spliced),
  ``splice`` (in-kernel copies), ``websocket`` (the app's side of a WebSocket), ``frames`` (WebSocket
  frames relayed between the two connections, with no task);
- ``config/``   reads YAML and the environment, validates everything once, freezes it;
- ``metrics``, ``logs``, ``pages``  Prometheus metrics; auth events and the log format; our own HTML/JSON;
- ``tracing``   OpenTelemetry spans (off unless configured): request, upstream call, grants; ``traceparent``.

A request flows: connection limits → the express lane, which serves the common signed-in GET on the same
rules and declines the rest → ``boundary`` (request id; errors to HTTP; access log) → router →
an ``/oauth2/*`` handler, or ``gate.handle_proxy``: path decoded once → skip rules → the session, loaded
only now (no session: 302 to sign in for a browser, 401 for an API client) → refreshed if due →
authorized → ``upstream.forward`` (or the WebSocket relay) → the answer relayed back → the session
cookie written just before the response headers go out, unless the session ended meanwhile.
"""

__version__ = "0.1.0"
