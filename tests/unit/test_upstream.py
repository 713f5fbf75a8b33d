"""Routing and paths: which upstream a request goes to, and the one path it is matched and sent with."""

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.errors import BadRequest
from proxy.upstream import Forwarder, Upstream, normalize_path
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
    ("/public/../admin", "/admin"), ("/public/%2e%2e/admin", "/admin"), ("/public/%2E%2E/admin", "/admin"),
    ("/public%2F..%2Fadmin", "/admin"), ("/public/..%2fadmin", "/admin"), ("/public/..%5Cadmin", "/admin"),
    ("/public\\..\\admin", "/admin"), ("//admin", "/admin"), ("/./admin", "/admin"), ("/../../etc", "/etc"),
    ("/a/./b/", "/a/b/"), ("/a/b/..", "/a/"), ("/caf%C3%A9", "/caf%C3%A9"), ("/a%20b", "/a%20b"),
    ("/%7Euser", "/~user"), ("", "/"),
])
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


def test_nul_byte_is_refused():
    with pytest.raises(BadRequest):
        normalize_path("/a%00b")


def test_normalisation_is_idempotent():
    for raw in ("/public/%2e%2e/admin", "/a%20b/./c", "/x/..%2F..%2Fy"):
        once = normalize_path(raw)
        assert normalize_path(once) == once


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
