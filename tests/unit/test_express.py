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


class _CountingParser:
    """The lane's httptools parser, counting the heads it is given."""

    def __init__(self, parser: object) -> None:
        self.parser, self.fed = parser, 0

    def feed_data(self, data: bytes) -> None:
        self.fed += 1
        self.parser.feed_data(data)                          # type: ignore[attr-defined]

    def get_http_version(self) -> str:
        return self.parser.get_http_version()                # type: ignore[attr-defined,no-any-return]


async def test_the_same_head_again_on_a_connection_is_not_parsed_again_and_only_by_the_lane_that_took_it():
    """wrk, an API client polling, a browser reloading: the next head on a connection is often the last
    one's bytes. ``take`` keeps the last head it took per connection and its parse; only those exact bytes,
    on the same lane, skip llhttp and the field checks — and each still gets a request of its own."""
    config = make_config()
    upstreams = [Upstream(u, make_client(u)) for u in config.upstreams]
    app = web.Application()
    app[CONFIG], app[CLOCK], app[METRICS] = config, time.time, Metrics()
    app[STORE], app[REFRESHER] = None, None                  # type: ignore[assignment]  # not read by take
    app[FORWARDER] = Forwarder(config, upstreams, AssertionSigner(config.cookie.keys, config.public_url))
    served: list[object] = []

    def started(serve):                                      # what the connection would run: its request
        served.append(serve.cr_frame.f_locals["request"])
        serve.close()

    handler = SimpleNamespace(**vars(HANDLER), express_last=None, express_started=started)
    try:
        lane = ExpressLane(app)
        lane._parser = counting = _CountingParser(lane._parser)        # type: ignore[assignment]
        a, b = head("/a?x=1", "app.example.com").encode(), head("/b", "app.example.com").encode()
        for data in (a, a, a):
            assert lane.take(handler, data)                  # type: ignore[arg-type]
        assert counting.fed == 1 and len(served) == 3
        first, *again = served
        for request in again:
            assert request is not first and request.headers is first.headers        # type: ignore[attr-defined]
            assert (request.path, request.query_string, request[MATCH_KEY]) == ("/a", "x=1", "/a")  # type: ignore
            assert dict(request) == dict(first)              # type: ignore[call-overload]   # nothing carried over
        assert lane.take(handler, b) and counting.fed == 2  # type: ignore[arg-type]
        assert lane.take(handler, a) and counting.fed == 3  # type: ignore[arg-type]   # only the last is kept
        a_byte_off = a.replace(b"x=1", b"x=2")
        assert lane.take(handler, a_byte_off) and counting.fed == 4                    # type: ignore[arg-type]
        assert served[-1].query_string == "x=2"             # type: ignore[attr-defined]
        assert not lane.take(handler, b"GET /oauth2/sign_out HTTP/1.1\r\nHost: h\r\n\r\n")  # type: ignore[arg-type]
        assert handler.express_last[1] == a_byte_off         # a declined head replaces nothing
        reloaded = ExpressLane(app)                          # a reload's new lane parses for itself
        reloaded._parser = other = _CountingParser(reloaded._parser)   # type: ignore[assignment]
        assert reloaded.take(handler, a_byte_off) and other.fed == 1  # type: ignore[arg-type]
    finally:
        for upstream in upstreams:
            await upstream.client.close()
