"""express.py's routing of a head, without a server: which upstream a (path, Host) goes to, kept per pair.

The lane as a whole (answers byte-equal to aiohttp's path, declines, held bytes) is tested against real
servers in tests/integration/test_express.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from aiohttp import web

from proxy.assertion import AssertionSigner
from proxy.context import CLOCK, CONFIG, REFRESHER
from proxy.express import ROUTE_CACHE, ExpressLane
from proxy.metrics import METRICS, Metrics
from proxy.paths import MATCH_KEY, NORMALISED_PATH
from proxy.session import STORE
from proxy.upstream import FORWARDER, Forwarder, Upstream, make_client
from tests.unit.conftest import make_config

HANDLER = SimpleNamespace(max_line_size=8190, max_headers=128, max_field_size=8190, peer="127.0.0.1", transport=None)


def head(path: str, host: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: a=1\r\n\r\n"


async def test_a_path_goes_to_its_hosts_upstream_every_time_and_the_kept_routes_are_bounded():
    config = make_config(upstreams=[{"path": "/", "url": "http://127.0.0.1:9", "host": "wiki.example.com"},
                                    {"path": "/", "url": "http://127.0.0.1:10"}],
                         allowed_hosts=["wiki.example.com"], cookie={"domain": "example.com"},
                         skip_auth=[{"path": "^/public/"}])
    upstreams = [Upstream(u, make_client(u)) for u in config.upstreams]
    app = web.Application()
    app[CONFIG], app[CLOCK], app[METRICS] = config, time.time, Metrics()
    app[STORE], app[REFRESHER] = None, None                  # type: ignore[assignment]  # not read by routing
    app[FORWARDER] = Forwarder(config, upstreams, AssertionSigner(config.cookie.keys, config.public_url))
    try:
        lane = ExpressLane(app)
        for _ in range(2):                                   # the second time from the kept routes
            wiki = lane._request(HANDLER, head("/a;v=1/b", "WIKI.example.com:443"))      # type: ignore[arg-type]
            app_ = lane._request(HANDLER, head("/a;v=1/b", "app.example.com"))           # type: ignore[arg-type]
            assert wiki is not None and app_ is not None
            assert wiki[1] is upstreams[0] and app_[1] is upstreams[1]
            for request, _ in (wiki, app_):
                assert (request[NORMALISED_PATH], request[MATCH_KEY]) == ("/a;v=1/b", "/a/b")
                assert request.path == "/a;v=1/b" and request.query_string == ""
            assert lane._request(HANDLER, head("/public/x", "app.example.com")) is None      # type: ignore[arg-type]
        assert len(lane._routes) == 3
        for n in range(ROUTE_CACHE + 5):
            lane._request(HANDLER, head(f"/p/{n}", "app.example.com"))                      # type: ignore[arg-type]
        assert 0 < len(lane._routes) <= ROUTE_CACHE
        lane._request(HANDLER, head("/" + "x" * 2000, "app.example.com"))                   # type: ignore[arg-type]
        assert all(len(path) < 2000 for path, _ in lane._routes)                            # too long to keep
    finally:
        for upstream in upstreams:
            await upstream.client.close()
