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


def test_proxy_cookies_removed_app_cookies_kept():
    # A secure, host-only cookie is named "__Host-authproxy" unless configured (config.models).
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
    req = make_mocked_request("GET", "/x", headers=CIMultiDict(spoof + [("Host", "app.example.com")]))
    h = policy().request_headers(req, None)
    assert h["X-Forwarded-For"] != "6.6.6.6" and "6.6.6.6" not in h["X-Forwarded-For"]
    assert h["X-Forwarded-Proto"] == "https" and h["X-Forwarded-Host"] == "app.example.com"


@pytest.mark.parametrize("set_cookie", [
    "__Host-authproxy=1.x; Path=/", "__Host-authproxy_0=1.x", "__Host-authproxy_login_s=1.x", "__host-AUTHPROXY=1.x",
    'pref=dark __Host-authproxy=1.mallory "; Path=/', "pref=x__Host-authproxy=1.y", "pref=1; Path=/; __Host-authproxy=1.x",
    " __Host-authproxy=1.x",
])
def test_upstream_set_cookie_naming_ours_anywhere_is_dropped(set_cookie, caplog):
    """An app must not set our cookies — nor hide one in another cookie's value, which chromium stores as
    that cookie and sends back where a looser parser reads a second session cookie (issue 13)."""
    kept = policy().response_headers([("Set-Cookie", set_cookie), ("Set-Cookie", "theme=dark; Path=/")])
    assert kept.getall("Set-Cookie") == ["theme=dark; Path=/"]
    assert "dropped an upstream Set-Cookie" in caplog.text
