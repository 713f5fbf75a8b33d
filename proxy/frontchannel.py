"""``GET /oauth2/frontchannel_logout``: the provider's page tells us a user signed out (Front-Channel Logout 1.0).

When a user signs out at the provider, its logout page loads each relying party's front-channel logout URI
in an iframe with ``iss`` and ``sid`` (§2, with ``frontchannel_logout_session_required``). That iframe is a
cross-site subresource: browsers do not send our session cookie (``SameSite=Lax``) with it, so the sessions
are ended by ``sid`` through ``SessionEnds``, as back-channel logout ends them — every session of that
provider session, in every browser and worker, not just a cookie the iframe may or may not carry.

Nothing is signed here, unlike a back-channel logout token: anyone who knows a user's ``sid`` could make
that user's browser load this URL and sign them out (a logout CSRF the specification accepts, §4). So it
is off unless ``provider.frontchannel_logout`` is set, ``iss`` must be our issuer, and ``sid`` must look
like one. The answer may be framed by the provider only (``frame-ancestors`` its origins, §3), is never
cached, and sends no Referer.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from aiohttp import web

from .context import CONFIG, PROVIDER
from .ending import ENDS, Reason
from .metrics import METRICS

log = logging.getLogger("authproxy.frontchannel")

# A sid (OIDC Front-Channel Logout §3): an opaque string; printable ASCII of bounded length is enough.
_SID = re.compile(r"[\x21-\x7e]{1,255}")
_PAGE = '<!doctype html><meta charset="utf-8"><title>{title}</title><p>{title}</p>'


async def handle_frontchannel_logout(request: web.Request) -> web.Response:
    config, provider = request.app[CONFIG], request.app[PROVIDER]
    iss, sid = request.query.get("iss"), request.query.get("sid")
    headers = {"Cache-Control": "no-cache, no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer",
               "Content-Security-Policy": "default-src 'none'; frame-ancestors " + " ".join(_provider_origins(
                   config.provider.issuer, provider.metadata.end_session_endpoint if provider.metadata else None))}
    if iss != config.provider.issuer or sid is None or not _SID.fullmatch(sid):
        log.warning("front-channel logout refused: %s", "another issuer" if iss != config.provider.issuer
                    else "no sid, or not one")
        return web.Response(status=400, text=_PAGE.format(title="Not a logout request of our provider"),
                            content_type="text/html", headers=headers)
    ends = request.app[ENDS]
    ended = await ends.end(ends.new(Reason.FRONTCHANNEL, sid=sid))
    request.app[METRICS].event("frontchannel_logout", f"front-channel logout: sid ended ({ended} stored sessions)",
                               sid_given=True, ended=ended)
    return web.Response(text=_PAGE.format(title="Signed out"), content_type="text/html", headers=headers)


def _provider_origins(*urls: str | None) -> list[str]:
    """The origins (RFC 6454) of the provider's issuer and logout endpoint: the pages that may frame us."""
    origins: list[str] = []
    for url in urls:
        if not url:
            continue
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if parts.scheme in ("http", "https") and parts.netloc and origin not in origins:
            origins.append(origin)
    return origins or ["'none'"]
