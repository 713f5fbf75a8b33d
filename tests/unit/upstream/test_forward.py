"""Routing and paths: which upstream a request goes to, and the one path it is matched and sent with."""

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.errors import BadRequest
from proxy.paths import match_key, normalize_path
from proxy.upstream.forward import Forwarder, Upstream
from tests.unit.conftest import make_config


def test_longest_prefix_wins_on_segment_boundary():
    cfg = make_config(upstreams=[{"path": "/", "url": "http://127.0.0.1:1"},
                                 {"path": "/app", "url": "http://127.0.0.1:2"},
                                 {"path": "/app/api", "url": "http://127.0.0.1:3"}])
    f = Forwarder(cfg, [Upstream(u, client=None) for u in cfg.upstreams])
    assert f.route("/app/api/x").config.url.endswith(":3")
    assert f.route("/app/apix").config.url.endswith(":2")
    assert f.route("/app").config.url.endswith(":2")
    assert f.route("/application").config.url.endswith(":1")


# -- path normalisation: one path for matching and forwarding ------------------------------------


@pytest.mark.parametrize("raw,expected", [
    ("/", "/"), ("/a/b", "/a/b"), ("/a/b?x=../y", "/a/b"), ("/a/b#frag", "/a/b"),
    ("//admin", "/admin"), ("/a//b/", "/a/b/"), ("/caf%C3%A9", "/caf%C3%A9"), ("/caf\u00e9", "/caf%C3%A9"),
    ("/a%20b", "/a%20b"), ("/%7Euser", "/~user"), ("", "/"), ("/a%2Fb", "/a/b"), ("/a;b=c/d", "/a;b=c/d"),
    ("/a%3Bb/d", "/a;b/d"), ("/a%3Fb", "/a%3Fb"), ("/100%25", "/100%25"), ("/a%0Ab", "/a%0Ab"),
    ("/.well-known/x", "/.well-known/x"), ("/a/..b/c.", "/a/..b/c."),
    ("http://evil.example/a/b?q", "/a/b"), ("https://evil.example", "/"), ("http://x//a", "/a"),
])
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", [
    # dot segments, raw, encoded, with segment parameters (Tomcat reads "..;" as ".."): never resolved
    "/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin", "/public%2F..%2Fadmin", "/public/..%2fadmin",
    "/./admin", "/../../etc", "/a/./b/", "/a/b/..", "/a/b/.", "/public/..;/admin", "/public/.;/admin",
    "/oauth2/%2e%2e/x", "/static/..%2fadmin", "http://evil/a/../b",
    # backslashes, raw or encoded
    "/public\\..\\admin", "/oauth2/..\\admin/secret", "/oauth2/..%5Cadmin/secret", "/oauth2/%2e%2e%5cadmin",
    "/a\\b",
    # NUL, invalid or overlong UTF-8, double encoding
    "/a%00b", "/a%c0%aeb", "/%c0%ae%c0%ae/admin", "/%e0%80%ae", "/%ff", "/%252e%252e/admin", "/a%255Cb",
    "/100%", "/a%zz", "/%u002e%u002e/admin", "/a%2", "/%25%32%65%25%32%65/admin", "/a%25%34%31",
    # Unicode that IIS / best-fit code pages turn into path punctuation
    "/%EF%BC%8E%EF%BC%8E/admin", "/\uff0e\uff0e/admin", "/a%EF%BC%8Fb", "/a\u2215b", "/a%E2%88%95b",
    "/a\uff3cb", "/a\u2025/b", "/a\uff05%32%65", "/a\uff1bx/b",
    # a target that is no path (aiohttp refuses "*" itself)
    "evil.example/a", "mailto:x",
])
def test_ambiguous_paths_are_refused(raw):
    with pytest.raises(BadRequest):
        normalize_path(raw)


def test_normalisation_is_idempotent():
    for raw in ("/a%20b//c", "/x/%2F/y", "/caf%C3%A9/;p=1", "/100%25"):
        once = normalize_path(raw)
        assert normalize_path(once) == once


def test_match_key_drops_segment_parameters():
    assert match_key("/admin;jsessionid=1/x") == "/admin/x"
    assert match_key("/;x/admin/") == "/admin/"
    assert match_key("/a;b;c") == "/a"
    assert match_key("/plain") == "/plain"


def test_routing_matches_without_segment_parameters():
    cfg = make_config(upstreams=[{"path": "/", "url": "http://127.0.0.1:1"},
                                 {"path": "/admin", "url": "http://127.0.0.1:2", "strip_prefix": True}])
    f = Forwarder(cfg, [Upstream(u, client=None) for u in cfg.upstreams])
    for raw in ("/admin;jsessionid=1/x", "/admin%3Bx/x", "/;a/admin/x", "/admin;/x"):
        path = normalize_path(raw)
        upstream = f.route(match_key(path))
        assert upstream.config.url.endswith(":2"), raw
        assert upstream.request_target(path, "") == "/x"            # the prefix with its parameters removed
    assert f.route(match_key(normalize_path("/adminx;a/x"))).config.url.endswith(":1")


def test_strip_prefix_and_base_path():
    cfg = make_config(upstreams=[{"path": "/app", "url": "http://127.0.0.1:2/base", "strip_prefix": True},
                                 {"path": "/keep", "url": "http://127.0.0.1:3"},
                                 {"path": "/sock", "url": "unix:/run/app.sock", "strip_prefix": True}])
    app, keep, sock = (Upstream(u, client=None) for u in cfg.upstreams)
    assert str(app.target("/app/users/7", "a=1")) == "http://127.0.0.1:2/base/users/7?a=1"
    assert str(app.target("/app", "")) == "http://127.0.0.1:2/base/"
    assert str(keep.target("/keep/x", "")) == "http://127.0.0.1:3/keep/x"
    assert str(sock.target("/sock/x", "")) == "http://localhost/x"


def test_host_header_passed_or_replaced():
    cfg = make_config(upstreams=[{"path": "/", "url": "http://10.0.0.9:8080", "pass_host_header": False},
                                 {"path": "/pass", "url": "http://10.0.0.9:8080"},
                                 {"path": "/sock", "url": "unix:/run/app.sock", "pass_host_header": False}])
    replaced, passed, sock = (Upstream(u, client=None) for u in cfg.upstreams)
    forwarder = Forwarder(cfg, [replaced, passed, sock])
    req = make_mocked_request("GET", "/x", headers={"Host": "app.example.com"})
    assert forwarder.request_headers(req, None, replaced)["Host"] == "10.0.0.9:8080"
    assert forwarder.request_headers(req, None, passed)["Host"] == "app.example.com"
    assert forwarder.request_headers(req, None, sock)["Host"] == "app.example.com"     # a socket has no authority


def test_routing_by_host_before_path_then_longest_prefix():
    """An upstream for the request's host wins over any without one, whatever their prefixes; another host's
    upstream is never chosen; a host with none of its own gets those for no host in particular."""
    cfg = make_config(cookie={"domain": "example.com"}, allowed_hosts=["wiki.example.com", "ci.example.com"],
                      upstreams=[{"path": "/", "url": "http://127.0.0.1:9"},
                                 {"path": "/api/deep", "url": "http://127.0.0.1:9"},
                                 {"path": "/", "url": "http://127.0.0.1:10", "host": "wiki.example.com"},
                                 {"path": "/admin", "url": "http://127.0.0.1:11", "host": "wiki.example.com"},
                                 {"path": "/api", "url": "http://127.0.0.1:12", "host": "ci.example.com"}])
    f = Forwarder(cfg, [Upstream(u, client=None) for u in cfg.upstreams])

    def where(path: str, host: str | None) -> tuple[str | None, str]:
        upstream = f.route(path, host)
        assert upstream is not None
        return upstream.config.host, upstream.config.path

    assert where("/api/deep/x", "wiki.example.com") == ("wiki.example.com", "/")
    assert where("/admin/x", "wiki.example.com") == ("wiki.example.com", "/admin")
    assert where("/adminx", "wiki.example.com") == ("wiki.example.com", "/")
    assert where("/api/x", "ci.example.com") == ("ci.example.com", "/api")
    assert where("/other", "ci.example.com") == (None, "/")
    assert where("/api/deep/x", "ci.example.com") == ("ci.example.com", "/api")
    assert where("/admin/x", "evil.example") == (None, "/")
    assert where("/api/deep/1", None) == (None, "/api/deep")
