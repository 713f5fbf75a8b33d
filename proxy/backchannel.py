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
from .errors import TokenValidationError
from .metrics import METRICS
from .pages import json_answer
from .provider import LOGOUT_TOKEN_MAX_AGE
from .session import STORE

log = logging.getLogger("authproxy.backchannel")


async def handle_backchannel_logout(request: web.Request) -> web.Response:
    form = await request.post()
    token = form.get("logout_token")
    if not isinstance(token, str) or not token:
        return _refused("the request has no logout_token")
    try:
        claims = await request.app[PROVIDER].verify_logout_token(token)
    except TokenValidationError as exc:
        log.warning("back-channel logout refused: %s", exc)
        return _refused(f"the logout token failed a check ({exc.code})")
    store = request.app[STORE]
    if not await store.first_use(claims["jti"], 2 * LOGOUT_TOKEN_MAX_AGE):
        log.warning("back-channel logout refused: jti already used")
        return _refused("the logout token was already used")
    sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
    sub = None if sid else claims.get("sub")
    ends = request.app[ENDS]
    ended = await ends.end(ends.new(Reason.BACKCHANNEL, sid=sid, sub=sub))
    request.app[METRICS].event("backchannel_logout", f"back-channel logout: {'sid' if sid else 'sub'} ended"
                               f" ({ended} stored sessions)", sid_given=bool(sid), ended=ended)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


def _refused(description: str) -> web.Response:
    """Back-Channel Logout 1.0 §2.8: 400 with an OAuth-style error body."""
    return json_answer(400, {"error": "invalid_request", "error_description": description})
