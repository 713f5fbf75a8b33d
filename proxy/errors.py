"""The exception tree of authproxy, and what each branch becomes at the HTTP boundary.

Internal code raises these domain errors; only the error middleware in ``boundary.py`` turns them
into responses (an HTML page for a browser, JSON for an API client, a redirect to sign in, a bare
status for the forward-auth endpoint, OAuth-style JSON for the back-channel one) and a log line with
the request id. A ``Refusal`` is an answer given on purpose (who may not, what does not exist), so
the boundary does not log it as a failure. Nothing below ever carries a token, a code or a cookie
value in its message::

    AuthProxyError                    base; ``status`` and ``title`` say how it is shown
    ├── ConfigError                   start-up only: every problem with its YAML path (exit 2)
    ├── CookieError                   a cookie that does not open: treated as "no session", never shown
    │   └── SessionWasEnded           a save of a session that has ended: refused, not written back
    ├── SessionEnded                  a refresh the provider refused: the session ends, never shown
    ├── StoreUnavailable              the session store cannot be reached (503)
    ├── BadRequest                    a request the proxy refuses to interpret (400)
    │   └── BadQueryRules             an ``/oauth2/auth`` query that names a rule (no longer read)
    ├── SessionTooLarge               the session does not fit in browser cookies (413)
    ├── LoginError                    the browser's login attempt cannot go on (4xx, offers a retry)
    │   ├── StateMismatch             callback ``state`` matches no login cookie (403)
    │   ├── AuthorizationDenied       the provider answered ``error=…`` (e.g. access_denied) (403)
    │   └── AccountRefused            the provider signed in an account this site does not take (403)
    ├── ProviderError                 the provider failed a step: unreachable, 5xx, bad JSON (502)
    │   ├── ProviderUnavailable       needed the provider, could not reach it, no fallback (503)
    │   └── TokenRejected             the provider answered an OAuth ``error`` (``code`` = that error)
    ├── TokenValidationError          a token or userinfo of the provider failed a check (502; ``code`` says which)
    ├── BearerRejected                a client's ``Authorization: Bearer`` token is refused (401 ``invalid_token``)
    ├── Refusal                       an answer on purpose, not a failure (status of its own)
    │   ├── NotFound                  a path nobody serves: under ``/oauth2/``, or no upstream (404)
    │   ├── Unauthenticated           nobody signed in: a browser goes to sign in, anything else gets 401
    │   ├── Forbidden                 signed in, but the rules do not let this user in (403)
    │   ├── StepUpRequired            signed in, but not strongly or recently enough for this route: sign in
    │   │                             again (browser), or 401 ``insufficient_user_authentication`` (RFC 9470)
    │   ├── StepUpRefused             the step-up sign-in came back weaker than the route asks (403, no loop)
    │   ├── WebSocketRefused          a handshake that must not reach the app (400, 403, 429)
    │   └── LogoutTokenRejected       a back-channel logout request refused (400, 413; OAuth ``invalid_request``)
    ├── UpstreamError                 the app behind us is unreachable (502)
    │   └── UpstreamTimeout           the app behind us is too slow (504)
    └── FrameError                    a worker ↔ host coordinator frame that breaks the protocol; never HTTP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Identity


class AuthProxyError(Exception):
    """Base of every error authproxy raises on purpose.

    ``status`` is the HTTP status the error middleware answers with; ``title`` is the one-line
    heading of the error page; ``str(error)`` is the sentence shown to the user and logged.
    """

    status: int = 500
    title: str = "Something went wrong"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where, what, and how to fix it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(AuthProxyError):
    """The configuration is not usable; lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        count = len(problems)
        lines = [f"{source}: {count} configuration problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {problem}" for problem in problems]
        super().__init__("\n".join(lines))


class CookieError(AuthProxyError):
    """A cookie that is malformed, tampered with, expired or sealed with an unknown key.

    Never shown to a user: the session layer turns it into "signed out" and logs a warning.
    """

    status = 401
    title = "Signed out"


class BadRequest(AuthProxyError):
    """A request whose target cannot be interpreted safely (e.g. a NUL byte in the path)."""

    status = 400
    title = "Bad request"


class BadQueryRules(BadRequest):
    """An ``/oauth2/auth`` query naming a rule, from a check written for the old form: fail closed."""


class SessionTooLarge(AuthProxyError):
    """The sealed session needs more cookies than a browser sends back; Redis holds any size."""

    status = 413
    title = "Your session is too large"

    def __init__(self, size: int, chunks: int) -> None:
        super().__init__(f"The session ({size} bytes) needs {chunks} cookies, more than a browser sends back. "
                         "The operator can keep sessions in Redis (session.store: redis) or ask the provider for "
                         "smaller tokens.")


class SessionWasEnded(CookieError):
    """A save of a session that has ended: refused, so a request in flight cannot bring it back."""


class SessionEnded(AuthProxyError):
    """The provider said the grant is gone (or its answer failed a check): sign in again.

    Raised by the refresh logic; the gate and the WebSocket watcher end the session for it, so it is
    never shown as such.
    """

    status = 401
    title = "Signed out"


class StoreUnavailable(AuthProxyError):
    """The session store cannot be reached; requests that need it get a 503 until it is back."""

    status = 503
    title = "Sessions are unavailable"


class LoginError(AuthProxyError):
    status = 400
    title = "Sign-in could not be completed"


class StateMismatch(LoginError):
    """The callback's ``state`` matches none of this browser's login cookies (RFC 6749 §10.12)."""

    status = 403


class AuthorizationDenied(LoginError):
    """The provider redirected back with ``error=…`` instead of a code (RFC 6749 §4.1.2.1)."""

    status = 403

    def __init__(self, error: str, description: str | None = None) -> None:
        self.error = error
        text = f"The identity provider did not grant access ({error})"
        if description:
            text += f": {description[:200]}"
        super().__init__(text + ".")


class AccountRefused(LoginError):
    """The provider signed the user in, but with an account the configuration does not accept before
    any rule is asked: a Google account outside ``provider.google_hosted_domains``. The page names the
    accounts that are taken, so the user can sign in again with the right one; ``code`` is logged."""

    status = 403
    title = "This account cannot sign in here"

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ProviderError(AuthProxyError):
    """The identity provider failed at ``step`` (discovery, jwks, token, refresh, userinfo).

    ``transient`` is true when trying again later may work (unreachable, timed out, 5xx); the
    refresh logic uses it to keep a still-valid session going instead of ending it. ``http_status``
    is the provider's HTTP status when its answer was an HTTP error, so a caller can tell a refusal
    (401, 403) from a broken answer without reading the message.
    """

    status = 502
    title = "The identity provider failed"

    def __init__(self, step: str, detail: str, *, transient: bool = False, http_status: int | None = None) -> None:
        self.step = step
        self.detail = detail
        self.transient = transient
        self.http_status = http_status
        super().__init__(f"The identity provider failed during {step}: {detail}.")


class ProviderUnavailable(ProviderError):
    """A session needed the provider (to refresh) and it could not be reached: try again later."""

    status = 503
    title = "The identity provider is unavailable"

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(step, detail, transient=True)


class TokenRejected(ProviderError):
    """The provider answered a grant with an OAuth error code (RFC 6749 §5.2)."""

    def __init__(self, step: str, code: str, description: str | None = None) -> None:
        self.code = code
        detail = f"it answered {code}" + (f" ({description[:200]})" if description else "")
        super().__init__(step, detail)


class TokenValidationError(AuthProxyError):
    """A token the provider signed (ID, access or logout token; see ``tokens.py``) or its userinfo
    failed a check; ``code`` names it."""

    status = 502
    title = "Sign-in failed a security check"

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"The identity provider's answer failed a security check ({code}): {detail}.")


class BearerRejected(AuthProxyError):
    """A bearer token that is malformed, badly signed, expired, not an access token or not for us;
    ``code`` names the check (RFC 6750 §3.1). The gate answers 401 ``invalid_token``; the detail goes
    to the log only, never to the client."""

    status = 401
    title = "Invalid access token"

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        super().__init__(f"The bearer token was refused ({code}): {detail}.")


class Refusal(AuthProxyError):
    """An answer the proxy gives on purpose — not here, not you, not like this — rather than a failure:
    the boundary renders it without a failure log line (what the raiser wants logged, it logs)."""


class NotFound(Refusal):
    """A path the proxy serves nothing at: nothing is forwarded. Always a page (it names no resource
    an API client could act on)."""

    status = 404
    title = "Not found"


class Unauthenticated(Refusal):
    """Nobody is signed in. ``path`` is the route path (``gate.route_path``) when the gate knows it:
    it decides whether the client is an API client (``api_paths``) that gets a 401 rather than a redirect."""

    status = 401
    title = "Sign in to continue"

    def __init__(self, path: str | None = None, *, login_url: str | None = None, redirect: bool = False,
                 parameters: dict[str, str] | None = None) -> None:
        self.path = path
        # At /oauth2/auth for an ingress that passes the answer on (forward_auth.py): where to sign in, and
        # whether to send the browser there (302) rather than answer 401 with it.
        self.login_url = login_url
        self.redirect = redirect
        # A route with a step-up rule (stepup.py): the sign-in asks for what it needs at once.
        self.parameters = parameters
        super().__init__("Sign in to continue.")


class Forbidden(Refusal):
    """A signed-in user the authorization rules do not let in; ``identity`` says who, so the answer can
    tell them which account they are using (never its tokens)."""

    status = 403
    title = "You do not have access"

    def __init__(self, identity: Identity, path: str | None = None) -> None:
        self.identity = identity
        self.path = path
        super().__init__("Signed in without access here.")


class StepUpRequired(Refusal):
    """Signed in, but the route asks for a sign-in with another ``acr`` or a more recent ``auth_time``
    (``stepup.py``). A browser navigation is sent to sign in again asking for them; an API or Bearer client
    gets RFC 9470's 401 ``insufficient_user_authentication``. ``parameters``: what the new sign-in asks for
    (``acr_values``, ``max_age``); ``login_url``/``redirect``: as for ``Unauthenticated`` at ``/oauth2/auth``."""

    status = 401
    title = "Sign in again to continue"

    def __init__(self, parameters: dict[str, str], reason: str, *, path: str | None = None, bearer: bool = False,
                 login_url: str | None = None, redirect: bool = False) -> None:
        self.parameters = parameters
        self.reason = reason                # for the operator's log: what the session lacks
        self.path = path
        self.bearer = bearer                # the session is a Bearer token's: it cannot sign in again
        self.login_url = login_url
        self.redirect = redirect
        super().__init__("This page asks for a stronger or more recent sign-in.")


class StepUpRefused(Refusal):
    """A step-up sign-in came back without what the route asks (the provider answered a lower ``acr``, or an
    older ``auth_time``): a 403 page, never another redirect to the provider, which would loop. The session
    the user had is kept."""

    status = 403
    title = "A stronger sign-in is needed"

    def __init__(self, detail: str) -> None:
        self.detail = detail                # for the log: what the provider answered
        super().__init__("This page asks for a stronger sign-in than the identity provider confirmed. Sign in "
                         "again with the stronger method (for example a second factor), or ask the application's "
                         "administrator which one it needs.")


class WebSocketRefused(Refusal):
    """A WebSocket handshake that must not reach the app: not enabled, a foreign ``Origin``, not a valid
    handshake, too many sockets. ``code`` is the JSON ``error``; ``title`` the page's heading."""

    def __init__(self, status: int, code: str, title: str, message: str) -> None:
        self.status = status
        self.code = code
        self.title = title
        super().__init__(message)


class LogoutTokenRejected(Refusal):
    """A back-channel logout request refused (Back-Channel Logout 1.0 §2.8): 400, or 413 for a body too
    large; ``description`` is the OAuth ``error_description`` the provider reads."""

    def __init__(self, description: str, status: int = 400) -> None:
        self.status = status
        self.description = description
        super().__init__(description)


class UpstreamError(AuthProxyError):
    status = 502
    title = "The application is unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    title = "The application did not answer in time"


class FrameError(AuthProxyError):
    """A frame between a worker and the host coordinator that is too large, not JSON, or not a request
    the protocol knows (``coordinator.py``). Stays between processes: never an HTTP answer."""
