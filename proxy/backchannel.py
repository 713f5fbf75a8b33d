"""``POST /oauth2/backchannel_logout``: the provider tells us a user signed out (Back-Channel Logout 1.0).

The logout token is verified like an ID token, with its own rules (``Provider.verify_logout_token``),
and its ``jti`` may be used once. Then the sessions it names end, through ``SessionEnds`` like every
end: those of its ``sid`` when it has one, else every session of its ``sub`` signed in until now. The
store records the end (Redis: tombstones; cookie store: the denylist, until the longest session would
have ended anyway), their WebSockets close here and, through the fan-out, in the host's other workers.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .context import PROVIDER
from .ending import ENDS, Reason
from .errors import LogoutTokenRejected, TokenValidationError
from .metrics import METRICS
from .provider import LOGOUT_TOKEN_MAX_AGE
from .session import STORE

log = logging.getLogger("authproxy.backchannel")

# The largest request body read (§2.5: a form with one logout token, a signed JWT of a few KiB). aiohttp's
# own cap is 1 MiB, and it would parse multipart bodies too; a provider sends neither.
MAX_BODY = 64 * 1024
FORM = "application/x-www-form-urlencoded"


async def handle_backchannel_logout(request: web.Request) -> web.Response:
    """End the sessions a verified logout token names; a request refused is ``LogoutTokenRejected``,
    which the boundary answers as §2.8 asks: 400 (413 for a body too large) with an OAuth-style body."""
    if request.content_type != FORM:
        raise LogoutTokenRejected(f"the request is not {FORM} (Back-Channel Logout 1.0 §2.5)")
    if (request.content_length or 0) > MAX_BODY:          # a chunked body: aiohttp's 1 MiB cap still holds
        raise LogoutTokenRejected(f"the request body is larger than {MAX_BODY} bytes", status=413)
    form = await request.post()
    token = form.get("logout_token")
    if not isinstance(token, str) or not token:
        raise LogoutTokenRejected("the request has no logout_token")
    try:
        claims = await request.app[PROVIDER].verify_logout_token(token)
    except TokenValidationError as exc:
        log.warning("back-channel logout refused: %s", exc)
        raise LogoutTokenRejected(f"the logout token failed a check ({exc.code})") from exc
    store = request.app[STORE]
    if not await store.first_use(claims["jti"], 2 * LOGOUT_TOKEN_MAX_AGE):
        log.warning("back-channel logout refused: jti already used")
        raise LogoutTokenRejected("the logout token was already used")
    sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
    sub = None if sid else claims.get("sub")
    ends = request.app[ENDS]
    ended = await ends.end(ends.new(Reason.BACKCHANNEL, sid=sid, sub=sub))
    request.app[METRICS].event("backchannel_logout", f"back-channel logout: {'sid' if sid else 'sub'} ended"
                               f" ({ended} stored sessions)", sid_given=bool(sid), ended=ended)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})
