"""authproxy: an authenticating reverse proxy for apps that have no login of their own.

A browser without a session is sent through the OAuth 2.0 authorization-code flow (with PKCE, state
and, for OpenID Connect, a nonce); the callback exchanges the code, verifies the ID token and seals
the tokens into an encrypted, authenticated cookie. Every later request is opened from that cookie,
refreshed when due, and forwarded to the upstream app with ``Authorization: Bearer`` and identity
headers, streaming both ways.

The modules each own one boundary:

- ``config``    reads YAML and the environment, validates everything once, freezes it;
- ``crypto``    the only user of ``cryptography``: sealing values, random values, PKCE;
- ``session``   the Session value, its cookie codec, and writing the cookie as headers go out;
- ``provider``  the only code that talks to the identity provider (discovery, JWKS, grants);
- ``login``     the ``/oauth2/*`` endpoints and the safe-redirect guard;
- ``upstream``  the only code that talks to the app behind us;
- ``pages``     the proxy's own HTML/JSON answers;
- ``app``       wires it together: resources, middleware order, routes.

A request flows: error middleware → session middleware (lazy) → router → ``/oauth2/*`` handler or
the catch-all (no session: 302 to login for a browser, 401 for an API client; else forward
upstream) → session cookie written just before the response headers go out.
"""

__version__ = "0.1.0"
