"""express.py's routing of a head, without a server: which upstream a (path, Host) goes to, kept per pair.

The lane as a whole (answers byte-equal to aiohttp's path, declines, held bytes) is tested against real
servers in tests/integration/test_express.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from aiohttp import web

from proxy.assertion import AssertionSigner
from proxy.context import CLOCK, CONFIG, REFRESHER
from proxy.express import FIELDS_CACHE, ROUTE_CACHE, ExpressLane
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


async def test_a_block_of_fields_is_parsed_once_and_decides_the_same_every_time():
    config = make_config()
    upstreams = [Upstream(u, make_client(u)) for u in config.upstreams]
    app = web.Application()
    app[CONFIG], app[CLOCK], app[METRICS] = config, time.time, Metrics()
    app[STORE], app[REFRESHER] = None, None                  # type: ignore[assignment]  # not read by routing
    app[FORWARDER] = Forwarder(config, upstreams, AssertionSigner(config.cookie.keys, config.public_url))
    try:
        lane = ExpressLane(app)
        twice = "GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n"
        closing = "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        for _ in range(2):                                   # the second time from the kept blocks
            assert lane._request(HANDLER, twice) is None                                    # type: ignore[arg-type]
            assert lane._request(HANDLER, closing) is None                                  # type: ignore[arg-type]
        one = lane._request(HANDLER, head("/one?x=1", "app.example.com"))                   # type: ignore[arg-type]
        two = lane._request(HANDLER, head("/two", "app.example.com"))                       # type: ignore[arg-type]
        assert one is not None and two is not None
        (first, _), (second, _) = one, two
        assert (first.path, first.query_string, second.path) == ("/one", "x=1", "/two")
        assert first.headers is second.headers and first.headers["Cookie"] == "a=1"       # shared, read-only
        with pytest.raises(TypeError):
            first.headers["Cookie"] = "b=2"                                                 # type: ignore[index]
        assert first is not second and first[MATCH_KEY] == "/one" and second[MATCH_KEY] == "/two"
        assert len(lane._blocks) == 3
        for n in range(FIELDS_CACHE + 5):
            lane._request(HANDLER, head("/p", f"h{n}.example.com"))                        # type: ignore[arg-type]
        assert 0 < len(lane._blocks) <= FIELDS_CACHE
    finally:
        for upstream in upstreams:
            await upstream.client.close()
