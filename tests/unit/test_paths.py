"""Tests for proxy.paths: the request target's path, the match key, the prefix strip, the proxy's own
namespace, and the per-request values.

The tables of normalised and refused paths are in tests/unit/test_upstream.py (to move here once the
upstream restructuring has landed); this file covers the rest of the module and says which refusal each
class of ambiguous path gets.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.errors import BadRequest
from proxy.paths import (
    MATCH_KEY,
    NORMALISED_PATH,
    OWN_PREFIX,
    is_own_path,
    match_key,
    normalize_path,
    normalized_path,
    origin_path,
    request_key,
    strip_segments,
)


@pytest.mark.parametrize(("target", "path"), [
    ("/a/b?x=1", "/a/b"), ("/a#f?x", "/a"), ("?x", "/"), ("", "/"), ("/", "/"),
    ("http://h.example/p/q?x", "/p/q"), ("HTTPS://h.example:8443", "/"), ("git+ssh://h/x", "/x"),
    ("http://user@h.example/x#y", "/x"),
])
def test_origin_path_keeps_only_the_path(target: str, path: str) -> None:
    assert origin_path(target) == path


@pytest.mark.parametrize("target", ["a/b", "h.example/x", "1http://h/x", "*", "mailto:x", "h:80/x"])
def test_a_target_that_is_no_path_nor_absolute_form_is_refused(target: str) -> None:
    with pytest.raises(BadRequest, match="not a path"):
        origin_path(target)


@pytest.mark.parametrize(("raw", "message"), [
    ("/a%zz", "encodes nothing"), ("/a%2", "encodes nothing"), ("/a%", "encodes nothing"),
    ("/a%ffb", "not valid UTF-8"), ("/%c0%ae", "not valid UTF-8"),
    ("/a%00", "NUL"),
    ("/a%252e", "percent-encoded twice"),
    ("/a\\b", "backslash"), ("/a%5cb", "backslash"),
    ("/a\uff0fb", "path punctuation"), ("/a\u2044b", "path punctuation"),
    ("/a/%2e%2e/b", "dot segment"), ("/a/..;x/b", "dot segment"), ("/.", "dot segment"),
])
def test_each_refusal_says_what_is_wrong(raw: str, message: str) -> None:
    """The 400 page tells the client which rule its path broke."""
    with pytest.raises(BadRequest, match=message):
        normalize_path(raw)


def test_a_normal_path_is_returned_as_it_came() -> None:
    """The common case: no %, no dot segment, no // or backslash, ASCII only — untouched, even where a
    re-encoding would spell it differently."""
    for path in ("/a/b", "/a;b=c/d", "/x:y@z!$&'()*+,=", "/a.b/c..d"):
        assert normalize_path(path) == path


def test_a_normalised_path_is_encoded_again_with_only_unsafe_characters_escaped() -> None:
    assert normalize_path("/a b/%41%7e%3a%40") == "/a%20b/A~:@"
    assert normalize_path("/%3F%23%25") == "/%3F%23%25"          # ?, # and % stay encoded: they would change meaning
    assert normalize_path("//") == "/" and normalize_path("/a//") == "/a/"


def test_a_dot_inside_a_segment_is_no_dot_segment() -> None:
    assert normalize_path("/a/%2e%2eb/c%2e") == "/a/..b/c."
    assert normalize_path("/%2ewell-known/x") == "/.well-known/x"


@pytest.mark.parametrize(("path", "count", "expected"), [
    ("/app/users/7", 1, "/users/7"), ("/app", 1, "/"), ("/app/", 1, "/"), ("/a/b/c", 2, "/c"),
    ("/app;jsessionid=1/x", 1, "/x"),         # the prefix's parameters go with it
    ("/;p/app/x", 1, "/x"),                   # a parameter-only segment before the prefix is no segment
    ("/app/;p/x", 1, "/;p/x"),                # one after it stays with the rest
    ("/a/b", 0, "/a/b"), ("/a", 3, "/"),
])
def test_strip_segments(path: str, count: int, expected: str) -> None:
    assert strip_segments(path, count) == expected


def test_match_key_keeps_a_trailing_slash_and_the_root() -> None:
    assert match_key("/a;x/") == "/a/"
    assert match_key("/;x") == "/"
    assert match_key("/;x/") == "/"


@pytest.mark.parametrize(("key", "own"), [
    (OWN_PREFIX, True), ("/oauth2/", True), ("/oauth2/callback", True),
    ("/oauth2x", False), ("/oauth2-app/x", False), ("/app/oauth2/x", False), ("/", False),
])
def test_the_proxy_owns_only_its_namespace(key: str, own: bool) -> None:
    assert is_own_path(key) is own


def test_the_request_values_are_computed_once() -> None:
    request = make_mocked_request("GET", "/admin;j=1//x?q=1", app=web.Application())
    assert normalized_path(request) == "/admin;j=1/x"
    assert request_key(request) == "/admin/x"
    assert request[NORMALISED_PATH] == "/admin;j=1/x" and request[MATCH_KEY] == "/admin/x"
    request[NORMALISED_PATH] = "/cached"
    request[MATCH_KEY] = "/cached-key"
    assert normalized_path(request) == "/cached" and request_key(request) == "/cached-key"


def test_a_refused_request_path_raises_at_first_use() -> None:
    request = make_mocked_request("GET", "/a/%2e%2e/b", app=web.Application())
    with pytest.raises(BadRequest):
        request_key(request)
    assert NORMALISED_PATH not in request
