"""The redirect guard (``redirects.safe_redirect``): every payload that could leave our origin falls back.

The same guard is fuzzed in tests/fuzz/test_properties.py and compared with chromium in tests/e2e.
"""

import pytest

from proxy.redirects import MAX_REDIRECT_LENGTH, safe_redirect
from tests.unit.conftest import make_config

ORIGIN = "https://app.example.com"

SAFE = [
    ("/", ORIGIN + "/"),
    ("/a/b?c=d&e=f", ORIGIN + "/a/b?c=d&e=f"),
    ("/path%20with%20space", ORIGIN + "/path%20with%20space"),
    ("https://app.example.com/x?y=1", ORIGIN + "/x?y=1"),
    ("HTTPS://APP.EXAMPLE.COM/x", ORIGIN + "/x"),
    ("https://app.example.com:443/x", ORIGIN + "/x"),
    ("https://app.example.com", ORIGIN + "/"),
    # the rest of an absolute URL as written: chromium keeps an empty "?" and a fragment, so do we
    ("https://app.example.com/x?", ORIGIN + "/x?"),
    ("https://app.example.com/x#part", ORIGIN + "/x#part"),
    ("https://app.example.com?q=1", ORIGIN + "/?q=1"),
    # non-ASCII is percent-encoded as UTF-8, as a browser sends it: a look-alike slash is only a path here
    ("/caf\u00e9?q=\u00fc", ORIGIN + "/caf%C3%A9?q=%C3%BC"),
    ("https://app.example.com/\u00e9", ORIGIN + "/%C3%A9"),
    # a look-alike slash is refused by the gate (paths.py: other servers read it as "/"), so no redirect goes there
    ("/\u2215\u2215evil.example", None),
    ("/\uff0f\uff0fevil.example", None),
    ("/%2Fnot-a-host-but-a-path-segment-after-one-slash", None),   # decodes to //…: refused
]

UNSAFE = [
    "//evil.example", "///evil.example", "////evil.example/x", "/\\evil.example", "\\/\\/evil.example",
    "\\\\evil.example", "https:evil.example", "https:/evil.example", "http://evil.example", "https://evil.example/",
    "https://app.example.com.evil.example/", "https://app.example.com@evil.example", "https://user:pw@app.example.com/",
    "https://evil.example#@app.example.com", "https://evil.example?@app.example.com",
    "%2F%2Fevil.example", "/%2F/evil.example", "/%2f%2fevil.example", "/%252F%252Fevil.example", "/%09/evil.example",
    "/%5Cevil.example", "/%5cevil.example", "/\tevil.example", "/\n/evil.example", "/x\r\nSet-Cookie: a=b",
    "javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<script>alert(1)</script>", "vbscript:x",
    "ftp://app.example.com/", "http://app.example.com/", "https://app.example.com:444/", "HtTpS:evil.example",
    "https://аpp.example.com/", "https://xn--pp-8cd.example.com/", " /x", "evil.example", "/\ud800x",
    "https://app.example.com\\@evil.example", "//app.example.com/", "/.\\/evil.example",
    # characters RFC 3986 excludes and browsers always percent-encode: only a hand-made target has them
    '/x"onmouseover="alert(1)', "/<script>alert(1)</script>", "/a>b", '/q?x="1"',
    # a port spelled so that a browser reads it as the default one, and a trailing-dot host
    "https://app.example.com:0443/x", "https://app.example.com./x", "https://app.example.com:443@evil.example/",
    # paths the gate answers with 400 (paths.py): a redirect there would only show an error page
    "/a/../b", "/a/%2e%2e/b", "/x%zz", "/a%255Cb",
]


@pytest.mark.parametrize("target,expected", SAFE)
def test_safe_targets_stay(target, expected):
    result = safe_redirect(target, make_config())
    assert result == (expected or ORIGIN + "/")


@pytest.mark.parametrize("target", UNSAFE)
def test_unsafe_targets_fall_back_to_default(target):
    assert safe_redirect(target, make_config(), default="/home") == ORIGIN + "/home"


def test_at_least_forty_payloads():
    assert len(UNSAFE) >= 40


def test_unsafe_default_falls_back_to_root():
    assert safe_redirect(None, make_config(), default="//evil") == ORIGIN + "/"


def test_longest_target_is_kept_and_one_more_character_is_not():
    path = "/deep?q=" + "a" * (MAX_REDIRECT_LENGTH - len(ORIGIN) - len("/deep?q="))
    assert safe_redirect(path, make_config()) == ORIGIN + path
    assert len(ORIGIN + path) == MAX_REDIRECT_LENGTH
    assert safe_redirect(path + "a", make_config(), default="/home") == ORIGIN + "/home"
    assert safe_redirect(ORIGIN + path + "a", make_config(), default="/home") == ORIGIN + "/home"


# -- many hosts (allowed_hosts): rd may go to any allowed host, never another ---------------------------------

GATEWAY = make_config(cookie={"domain": "example.com"},
                      allowed_hosts=["wiki.example.com", ".apps.example.com", "ci.example.com:8443",
                                     "dev.example.com:*"])

ALLOWED_HOST_TARGETS = [
    ("https://wiki.example.com/page?x=1", "https://wiki.example.com/page?x=1"),
    ("HTTPS://WIKI.EXAMPLE.COM", "https://wiki.example.com/"),
    ("https://wiki.example.com:443/x", "https://wiki.example.com/x"),
    ("https://apps.example.com/", "https://apps.example.com/"),                   # the domain itself
    ("https://a.apps.example.com/x", "https://a.apps.example.com/x"),             # and any name under it
    ("https://a.b.apps.example.com/x", "https://a.b.apps.example.com/x"),
    ("https://ci.example.com:8443/x", "https://ci.example.com:8443/x"),           # the port listed
    ("https://dev.example.com:9999/x", "https://dev.example.com:9999/x"),         # ":*": any port
    ("/x", ORIGIN + "/x"),                                                        # a path: public_url's origin
]

# What an attacker writes in rd to leave the allowed hosts (each falls back to public_url's start page).
HOSTILE_HOST_TARGETS = [
    "//evil.example", "//wiki.example.com/x", "///wiki.example.com", "https://evil.example/",
    "https://wiki.example.com.evil.example/",            # an allowed name as a prefix of another host
    "https://wiki.example.com.evil/",
    "https://evilwiki.example.com/", "https://evilapps.example.com/",   # no label boundary
    "https://apps.example.com.evil.example/", "https://x.apps.example.com.evil.example/",
    "https://wiki.example.com@evil.example/", "https://user:pw@wiki.example.com/",   # userinfo
    "https://evil.example#@wiki.example.com", "https://evil.example?@wiki.example.com",
    "https://evil.example\\@wiki.example.com", "https://wiki.example.com\\@evil.example/",   # backslashes
    "https:\\\\wiki.example.com", "https:/\\evil.example",
    "http://wiki.example.com/",                          # a downgrade from https
    "https://ci.example.com/x", "https://ci.example.com:8444/x", "https://wiki.example.com:8443/",   # other ports
    "https://wiki.example.com./x", "https://wiki..example.com/x",   # spellings of hosts
    "https://wiki.example.com%2f@evil.example", "https://wiki.example.com%40evil.example",
    "https://wiki\u3002example.com/", "https://wiki.example.com\uff0fevil.example",   # look-alike dot and slash
    "https://[::1]/", "https://127.0.0.1/", "javascript://wiki.example.com/%0aalert(1)",
    "https://other.example.com/",                        # under cookie.domain, but not allowed
]


@pytest.mark.parametrize(("target", "expected"), ALLOWED_HOST_TARGETS)
def test_rd_may_go_to_any_allowed_host(target, expected):
    assert safe_redirect(target, GATEWAY) == expected


@pytest.mark.parametrize("target", HOSTILE_HOST_TARGETS)
def test_rd_never_goes_to_a_host_that_is_not_allowed(target):
    assert safe_redirect(target, GATEWAY) == ORIGIN + "/"


def test_without_allowed_hosts_only_public_urls_origin_is_a_target():
    assert safe_redirect("https://wiki.example.com/x", make_config()) == ORIGIN + "/"
