"""An upstream for the refresh storm that notes which access token each request came with.

    python bench/token_upstream.py --port N --ttl SECONDS

Answers every request "ok\\n". Per relying party — authproxy sends ``Authorization: Bearer``,
mod_auth_openidc the ``OIDC_access_token`` header — it counts requests, the distinct tokens seen, and
*stale* requests: those whose token was first seen more than ``ttl`` seconds earlier. A token reaches the
upstream moments after the provider issued it, so ``first seen + ttl`` bounds its expiry from above and
the stale count is a lower bound of the requests forwarded with an expired access token.

``GET /__stats`` answers the counts as JSON; ``POST /__reset`` zeroes them. Neither is proxied: the
benchmark asks this server directly.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Counts:
    requests: int = 0
    without_token: int = 0
    stale: int = 0
    first_seen: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "without_token": self.without_token, "stale": self.stale,
                "tokens": len(self.first_seen)}


def make_app(ttl: float) -> web.Application:
    counts: dict[str, Counts] = {}

    async def handle(request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer "):
            who, token = "authproxy", bearer[len("Bearer "):]
        else:
            who, token = "mod_auth_openidc", request.headers.get("OIDC_access_token", "")
        mine = counts.setdefault(who, Counts())
        mine.requests += 1
        if not token:
            mine.without_token += 1
        else:
            now = time.monotonic()
            first = mine.first_seen.setdefault(token, now)
            if now - first > ttl:
                mine.stale += 1
        return web.Response(text="ok\n")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({who: c.as_dict() for who, c in counts.items()})

    async def reset(request: web.Request) -> web.Response:
        counts.clear()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/__stats", stats)
    app.router.add_post("/__reset", reset)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttl", type=float, required=True, help="the provider's access token lifetime, seconds")
    args = parser.parse_args()
    web.run_app(make_app(args.ttl), host="127.0.0.1", port=args.port, access_log=None, print=None)
