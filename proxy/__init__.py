"""authproxy: an authenticating reverse proxy for apps that have no login of their own.

A browser without a session is sent through the OAuth 2.0 authorization-code flow (with PKCE, state
and, for OpenID Connect, a nonce); the callback exchanges the code, verifies the ID token and seals
the tokens into an encrypted, authenticated cookie. Every later request is opened from that cookie,
refreshed when due, and forwarded to the upstream app with ``Authorization: Bearer`` and identity
headers, streaming both ways.

The modules each own one boundary:

- ``config``    reads YAML and the environment, validates everything once, freezes it;
- ``crypto``    the only user of ``cryptography``: sealing values, random values, PKCE;
- ``model``     the Session value: who the user is and their tokens, nothing about HTTP;
- ``session``   loading the session lazily, writing its cookie as headers go out;
- ``ending``    the one way a session ends: recorded in the store, applied here, fanned out;
- ``cookies``   the cookie format: sealed, chunked, cached on the way in; ``Set-Cookie`` values;
- ``provider``  the only code that talks to the identity provider (discovery, JWKS, grants);
- ``login``     the ``/oauth2/*`` sign-in and sign-out endpoints and the safe-redirect guard;
- ``gate``      what every other request passes: skip rules, authentication, refresh, authorization;
- ``refresh``   refreshing tokens once per session and expiry;
- ``authz``     who may pass (emails, domains, groups, users) and CORS for the proxy's answers;
- ``bearer``    API clients' own bearer JWTs, verified against the provider's keys;
- ``store``, ``redis_store``  where sessions live: the cookie (default) or Redis;
- ``websocket`` authenticated WebSocket upgrades and the frames after them;
- ``metrics``, ``logs``  Prometheus metrics, auth events and the log format;
- ``server``    the process: signals, reloads, workers;
- ``paths``     the one decoding of a request path: what is forwarded, what rules match, what is a 400;
- ``upstream``  the only code that talks to the app behind us: routing, the two clients;
- ``headers``   the header policy: what the client may send on, what the proxy sets, what comes back;
- ``relay``     the upstream's response on to the client: whole, streamed, batched or spliced;
- ``pages``     the proxy's own HTML/JSON answers;
- ``app``       wires it together: resources, middleware order, routes.

A request flows: error middleware → router → ``/oauth2/*`` handler or the catch-all, which loads the
session only if the request needs one (no session: 302 to login for a browser, 401 for an API client;
else forward upstream) → session cookie written just before the response headers go out, unless the
session ended meanwhile.
"""

__version__ = "0.1.0"
