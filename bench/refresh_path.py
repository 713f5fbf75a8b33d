"""Benchmark: the cost of the refresh path, as a ratio against a session that never refreshes.

One process runs a minimal token endpoint, a minimal upstream and authproxy (in-process, on real
loopback sockets). The proxy's clock is injected: for the "refresh every Nth request" case the
driver moves the clock past the access token's expiry before every Nth request, so exactly one
refresh grant happens per N requests. Both cases run alternately, several rounds, and the ratio is
computed per round (these machines are small and noisy: absolute numbers mean little).

    python bench/refresh_path.py [--requests 2000] [--every 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.app import create_app
from proxy.config import parse_config
from proxy.context import REFRESHER
from proxy.session import CODEC, Identity, Session

TTL = 300.0


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def start(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def token_app(counter: dict[str, int]) -> web.Application:
    """Discovery and a token endpoint that grants every refresh; ``counter["n"]``: the grants it answered."""

    async def token(request: web.Request) -> web.Response:
        await request.post()
        counter["n"] += 1
        return web.json_response({"access_token": f"at-{counter['n']}", "token_type": "Bearer",
                                  "expires_in": int(TTL), "refresh_token": f"rt-{counter['n']}"})

    async def discovery(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.json_response({"issuer": base, "authorization_endpoint": base + "/auth",
                                  "token_endpoint": base + "/token", "jwks_uri": base + "/jwks"})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    return app


def upstream_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    return app


async def run_case(client: aiohttp.ClientSession, url: str, cookie: str, clock: Clock, requests: int,
                   every: int | None) -> tuple[float, str]:
    """Requests per second; the cookie carried on from responses, as a browser would."""
    started = time.perf_counter()
    for i in range(requests):
        if every and i % every == every - 1:
            clock.offset += TTL            # the access token has expired: this request refreshes
        async with client.get(url, headers={"Cookie": cookie, "Accept": "text/plain"}) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
            for morsel in resp.cookies.values():
                if morsel.key == "_authproxy":
                    cookie = f"_authproxy={morsel.value}"
    return requests / (time.perf_counter() - started), cookie


async def main(args: argparse.Namespace) -> None:
    grants = {"n": 0}
    idp_runner, idp_port = await start(token_app(grants))
    up_runner, up_port = await start(upstream_app())
    issuer = f"http://127.0.0.1:{idp_port}"
    probe = web.AppRunner(web.Application())
    await probe.setup()
    site = web.TCPSite(probe, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await probe.cleanup()
    config = parse_config({
        "listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
        "provider": {"issuer": issuer, "client_id": "bench", "client_secret": "s"},
        "cookie": {"secret": base64.urlsafe_b64encode(b"b" * 32).decode(), "secure": False},
        "upstreams": [{"path": "/", "url": f"http://127.0.0.1:{up_port}"}],
        "logging": {"level": "warning"}})
    clock = Clock()
    app = create_app(config, clock=clock)
    proxy_runner, _ = await start(app, port)
    while app[REFRESHER]._provider.metadata is None:        # discovery in the background
        await asyncio.sleep(0.01)

    def fresh_cookie() -> str:
        now = clock()
        session = Session(identity=Identity(sub="bench"), access_token="at-0", created_at=now, issued_at=now,
                          expires_at=now + TTL, refresh_token="rt-0", id=f"s{now}")
        [(name, value)] = app[CODEC].dump(session)
        return f"{name}={value}"

    url = f"http://127.0.0.1:{port}/x"
    ratios, plain_rates, refresh_rates = [], [], []
    async with aiohttp.ClientSession() as client:
        await run_case(client, url, fresh_cookie(), clock, 200, None)          # warm-up
        for _ in range(args.rounds):
            plain, _ = await run_case(client, url, fresh_cookie(), clock, args.requests, None)
            grants_before = grants["n"]
            refreshing, _ = await run_case(client, url, fresh_cookie(), clock, args.requests, args.every)
            sent = grants["n"] - grants_before
            assert sent == args.requests // args.every, sent
            plain_rates.append(plain)
            refresh_rates.append(refreshing)
            ratios.append(refreshing / plain)
    print(json.dumps({"requests_per_case": args.requests, "refresh_every": args.every, "rounds": args.rounds}))
    print(f"{'round':>5} {'never refreshes (req/s)':>24} {'refresh every Nth (req/s)':>26} {'ratio':>7}")
    for i, (p, r, q) in enumerate(zip(plain_rates, refresh_rates, ratios, strict=False), 1):
        print(f"{i:>5} {p:>24.0f} {r:>26.0f} {q:>7.3f}")
    print(f"median ratio (refresh every {args.every} / never): {statistics.median(ratios):.3f}")
    for runner in (proxy_runner, up_runner, idp_runner):
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
