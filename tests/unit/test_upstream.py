"""Header policy: what the proxy owns is stripped before anything is added."""

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.session import Identity, Session
from proxy.upstream import Forwarder, Upstream, strip_cookies
from tests.unit.conftest import make_config

SESSION = Session(identity=Identity(sub="alice", email="a@x.test", preferred_username="al", groups=("g1", "g2")),
                  access_token="AT", created_at=0.0)


def forwarder():
    return Forwarder(make_config(), [])


def headers_for(raw):
    req = make_mocked_request("GET", "/x", headers=CIMultiDict(raw))
    return forwarder().request_headers(req, SESSION)


def test_spoofed_identity_and_authorization_are_replaced():
    h = headers_for([("Authorization", "Bearer evil"), ("X-Forwarded-User", "root"), ("x-forwarded-email", "r@x"),
                     ("X-FORWARDED-GROUPS", "admin"), ("X_Forwarded_User", "root"), ("X-Forwarded-Uri", "/admin"),
                     ("X-Forwarded-Preferred-Username", "root"), ("X-Real-IP", "1.2.3.4"), ("Forwarded", "for=x")])
    assert h.getall("Authorization") == ["Bearer AT"]
    assert h.getall("X-Forwarded-User") == ["alice"]
    assert h.getall("X-Forwarded-Email") == ["a@x.test"]
    assert h.getall("X-Forwarded-Groups") == ["g1,g2"]
    assert h.getall("X-Forwarded-Preferred-Username") == ["al"]
    assert "X_Forwarded_User" not in h and "X-Forwarded-Uri" not in h and "X-Real-IP" not in h and "Forwarded" not in h


def test_hop_by_hop_and_connection_listed_are_dropped():
    h = headers_for([("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "5"), ("X-Secret-Hop", "1"),
                     ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic x"), ("X-App", "kept")])
    for name in ("Connection", "Keep-Alive", "X-Secret-Hop", "TE", "Upgrade", "Proxy-Authorization"):
        assert name not in h
    assert h["X-App"] == "kept"


def test_proxy_cookies_removed_app_cookies_kept():
    h = headers_for([("Cookie", "_authproxy=s; app=1; _authproxy_0=c; _authproxy_login_abc=l; theme=dark")])
    assert h["Cookie"] == "app=1; theme=dark"
    assert "Cookie" not in headers_for([("Cookie", "_authproxy=s")])


def test_strip_cookies_keeps_values_with_equals():
    assert strip_cookies("a=b=c; _p=1", frozenset({"_p"}), ("_p_",)) == "a=b=c"


def test_no_session_means_no_identity():
    req = make_mocked_request("GET", "/x", headers={"X-Forwarded-User": "root"})
    h = forwarder().request_headers(req, None)
    assert "Authorization" not in h and "X-Forwarded-User" not in h


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

import pytest  # noqa: E402

from proxy.errors import BadRequest  # noqa: E402
from proxy.upstream import normalize_path  # noqa: E402


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
    cfg = make_config(upstreams=[{"path": "/", "url": "http://10.0.0.9:8080", "pass_host_header": False}])
    upstream = Upstream(cfg.upstreams[0], client=None)
    req = make_mocked_request("GET", "/x", headers={"Host": "app.example.com"})
    assert Forwarder(cfg, [upstream]).request_headers(req, None, upstream)["Host"] == "10.0.0.9:8080"
    assert Forwarder(cfg, [upstream]).request_headers(req, None)["Host"] == "app.example.com"


def test_forwarded_headers_believed_only_from_trusted_proxies():
    spoof = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "evil.example")]
    untrusted = make_config()
    req = make_mocked_request("GET", "/x", headers=CIMultiDict(spoof + [("Host", "app.example.com")]))
    h = Forwarder(untrusted, []).request_headers(req, None)
    assert h["X-Forwarded-For"] != "6.6.6.6" and "6.6.6.6" not in h["X-Forwarded-For"]
    assert h["X-Forwarded-Proto"] == "https" and h["X-Forwarded-Host"] == "app.example.com"


async def test_flush_interval_batches_small_pieces_without_losing_any():
    import asyncio

    from proxy.upstream import _copy_batched

    class Source:                          # what _copy_batched reads: an upstream body, piece by piece
        async def iter_any(self):
            for i in range(50):
                await asyncio.sleep(0.002)
                yield b"%02d" % i

    class Sink:
        def __init__(self):
            self.writes = []

        async def write(self, data):
            self.writes.append(data)

    sink = Sink()
    await _copy_batched(Source(), sink, interval=0.05)
    assert b"".join(sink.writes) == b"".join(b"%02d" % i for i in range(50))
    assert 1 <= len(sink.writes) < 50                 # batched: fewer writes than pieces
