"""Header policy: what the proxy owns is stripped before anything is added."""

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.headers import HeaderPolicy, strip_cookies
from proxy.session import Identity, Session
from tests.unit.conftest import make_config

SESSION = Session(identity=Identity(sub="alice", email="a@x.test", preferred_username="al", groups=("g1", "g2")),
                  access_token="AT", created_at=0.0)


def policy():
    return HeaderPolicy(make_config())


def headers_for(raw):
    req = make_mocked_request("GET", "/x", headers=CIMultiDict(raw))
    return policy().request_headers(req, SESSION)


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


def test_every_connection_line_of_a_request_names_hop_by_hop_fields():
    """A list field's lines are one list (RFC 9110 §5.3): a field named by the second Connection line is as
    hop-by-hop as one named by the first, and must not reach the app."""
    h = headers_for([("Connection", "keep-alive"), ("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "1"),
                     ("X-App", "kept")])
    assert "X-Secret-Hop" not in h and h["X-App"] == "kept"


def test_proxy_cookies_removed_app_cookies_kept():
    # A secure, host-only cookie is named "__Host-authproxy" unless configured (config.sessions).
    h = headers_for([("Cookie", "__Host-authproxy=s; app=1; __Host-authproxy_0=c; __Host-authproxy_login_abc=l; "
                                "theme=dark")])
    assert h["Cookie"] == "app=1; theme=dark"
    assert "Cookie" not in headers_for([("Cookie", "__Host-authproxy=s")])


def test_strip_cookies_keeps_values_with_equals():
    assert strip_cookies("a=b=c; _p=1", frozenset({"_p"}), ("_p_",)) == "a=b=c"


def test_no_session_means_no_identity():
    req = make_mocked_request("GET", "/x", headers={"X-Forwarded-User": "root"})
    h = policy().request_headers(req, None)
    assert "Authorization" not in h and "X-Forwarded-User" not in h


def test_host_is_the_clients_unless_given():
    req = make_mocked_request("GET", "/x", headers={"Host": "app.example.com"})
    assert policy().request_headers(req, None)["Host"] == "app.example.com"
    assert policy().request_headers(req, None, "10.0.0.9:8080")["Host"] == "10.0.0.9:8080"


def test_forwarded_headers_believed_only_from_trusted_proxies():
    spoof = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "evil.example")]
    req = make_mocked_request("GET", "/x", headers=CIMultiDict([*spoof, ("Host", "app.example.com")]))
    h = policy().request_headers(req, None)
    assert h["X-Forwarded-For"] != "6.6.6.6" and "6.6.6.6" not in h["X-Forwarded-For"]
    assert h["X-Forwarded-Proto"] == "https" and h["X-Forwarded-Host"] == "app.example.com"


@pytest.mark.parametrize("set_cookie", [
    "__Host-authproxy=1.x; Path=/", "__Host-authproxy_0=1.x", "__Host-authproxy_login_s=1.x", "__host-AUTHPROXY=1.x",
    'pref=dark __Host-authproxy=1.mallory "; Path=/', "pref=x__Host-authproxy=1.y",
    "pref=1; Path=/; __Host-authproxy=1.x",
    " __Host-authproxy=1.x",
])
def test_upstream_set_cookie_naming_ours_anywhere_is_dropped(set_cookie, caplog):
    """An app must not set our cookies — nor hide one in another cookie's value, which chromium stores as
    that cookie and sends back where a looser parser reads a second session cookie (issue 13)."""
    kept = policy().response_headers([("Set-Cookie", set_cookie), ("Set-Cookie", "theme=dark; Path=/")])
    assert kept.getall("Set-Cookie") == ["theme=dark; Path=/"]
    assert "dropped an upstream Set-Cookie" in caplog.text


def test_response_headers_drop_hop_by_hop_and_listed_fields_and_keep_the_upstreams_order(caplog):
    """Hop-by-hop fields, and those any ``Connection`` line names (in any case, with spaces), go; the rest
    keep their order and spelling, repeated ones too — also when a Set-Cookie of ours is taken out."""
    items = [("Server", "app"), ("X-Secret", "1"), ("Set-Cookie", "a=1"), ("Connection", "keep-alive, x-SECRET ,"),
             ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("Vary", "Accept"),
             ("set-cookie", "b=2"), ("Trailer", "X"), ("Upgrade", "h2c"), ("Content-Type", "text/plain"),
             ("Connection", "close, vary")]
    expected = [("Server", "app"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"),
                ("Content-Type", "text/plain")]     # Vary: named by the second Connection line
    assert list(policy().response_headers(items).items()) == expected
    ours = [*items[:7], ("SET-COOKIE", "__Host-authproxy=1.x"), *items[7:]]
    assert list(policy().response_headers(ours).items()) == expected
    assert caplog.text.count("dropped an upstream Set-Cookie") == 1


def test_forwarded_host_is_public_urls_host_unless_from_a_trusted_proxy():
    """A client's Host never becomes X-Forwarded-Host: apps build absolute links from it."""
    req = make_mocked_request("GET", "/x", headers={"Host": "evil.example", "X-Forwarded-Host": "evil2.example"})
    assert policy().request_headers(req, None)["X-Forwarded-Host"] == "app.example.com"
    ported = HeaderPolicy(make_config(public_url="https://app.example.com:8443"))
    assert ported.request_headers(req, None)["X-Forwarded-Host"] == "app.example.com:8443"
    trusted = HeaderPolicy(make_config(trusted_proxies=["127.0.0.0/8"]))
    from_balancer = make_mocked_request("GET", "/x", headers={"Host": "lb.internal", "X-Forwarded-Host": "a.example"},
                                        transport=_peer("127.0.0.1"))
    assert trusted.request_headers(from_balancer, None)["X-Forwarded-Host"] == "a.example"
    bare = make_mocked_request("GET", "/x", headers={"Host": "lb.internal"}, transport=_peer("127.0.0.1"))
    assert trusted.request_headers(bare, None)["X-Forwarded-Host"] == "lb.internal"


def _peer(address: str):
    from unittest.mock import Mock
    transport = Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (address, 1234) if name == "peername" else default
    return transport


OVERRIDES = [("X-HTTP-Method-Override", "DELETE"), ("x-http-method", "PUT"), ("X-Method-Override", "PATCH"),
             ("X_HTTP_METHOD_OVERRIDE", "DELETE"), ("x_method_override", "DELETE"), ("X-HTTP-Method_Override", "X")]


def test_method_override_headers_never_go_without_a_session():
    req = make_mocked_request("GET", "/public/x", headers=CIMultiDict([*OVERRIDES, ("X-App", "kept")]))
    anonymous = policy().request_headers(req, None)
    assert [name for name in anonymous if "method" in name.lower()] == []
    assert anonymous["X-App"] == "kept"
    signed_in = policy().request_headers(req, SESSION)              # the app's business once someone is signed in
    assert signed_in.getall("X-HTTP-Method-Override") == ["DELETE"]


def test_path_override_headers_are_always_dropped():
    """Symfony and IIS serve X-Original-URL's path: the rules checked the request line's."""
    spoof = [("X-Original-URL", "/admin/delete"), ("X-Rewrite-URL", "/admin"), ("x_original_url", "/admin"),
             ("X-Original-URI", "/admin"), ("X-Envoy-Original-Path", "/admin"), ("X-Forwarded-Path", "/admin")]
    req = make_mocked_request("GET", "/public/x", headers=CIMultiDict(spoof))
    for session in (None, SESSION):
        h = policy().request_headers(req, session)
        assert not any(value == "/admin" or value == "/admin/delete" for value in h.values()), session
