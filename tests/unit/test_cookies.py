"""The cookie format: the codec's round trip, chunking, tampering, expiry, rotation and decoded-session
cache — every bad cookie is no session — and ``own_cookies``, which reads the session cookies without
parsing the whole header and agrees with aiohttp."""

import base64

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.cookies import CHUNK_SIZE, CookieCodec, own_cookies
from proxy.crypto import Sealer
from proxy.errors import CookieError
from tests.unit.conftest import NOW, make_config, make_session



def codec(secret=None, name="_authproxy", clock=lambda: NOW):
    cfg = make_config(cookie={"name": name, **({"secret": secret} if secret else {})}).cookie
    return CookieCodec(cfg, Sealer(cfg.keys), clock)


session = make_session


def test_round_trip_single_cookie():
    c = codec()
    pairs = c.dump(session())
    assert [n for n, _ in pairs] == ["_authproxy"]
    assert "AT-secret" not in pairs[0][1]
    assert c.load(dict(pairs)) == session()


def test_big_session_is_chunked_and_joined():
    c = codec()
    big = session(id_token="x" * 6000)
    pairs = c.dump(big)
    assert [n for n, _ in pairs] == [f"_authproxy_{i}" for i in range(len(pairs))] and len(pairs) >= 2
    assert all(len(v) <= CHUNK_SIZE for _, v in pairs)
    assert c.load(dict(pairs)) == big


def test_reordered_or_missing_chunk_fails():
    c = codec()
    pairs = c.dump(session(id_token="x" * 6000))
    assert len(pairs) == 3
    (n0, v0), (n1, v1), (n2, v2) = pairs
    with pytest.raises(CookieError):
        c.load({n0: v1, n1: v0, n2: v2})
    with pytest.raises(CookieError):
        c.load({n0: v0, n2: v2})          # chunk 1 missing: joins only chunk 0
    with pytest.raises(CookieError):
        c.load({n0: v0, n1: v1})


def test_other_secret_and_other_name_fail():
    other = base64.urlsafe_b64encode(b"z" * 32).decode()
    pairs = codec().dump(session())
    with pytest.raises(CookieError):
        codec(secret=other).load(dict(pairs))
    renamed = {"other": pairs[0][1]}
    with pytest.raises(CookieError):
        codec(name="other").load(renamed)


def test_rotation():
    old_secret = base64.urlsafe_b64encode(b"o" * 32).decode()
    new_secret = base64.urlsafe_b64encode(b"n" * 32).decode()
    pairs = codec(secret=old_secret).dump(session())
    assert codec(secret=[new_secret, old_secret]).load(dict(pairs)) == session()


def test_session_older_than_expire_is_rejected():
    c = codec(clock=lambda: NOW + 168 * 3600)
    with pytest.raises(CookieError, match="cookie.expire"):
        c.load(dict(codec().dump(session())))


def test_expired_access_without_refresh_token_is_rejected():
    c = codec(clock=lambda: NOW + 301)
    with pytest.raises(CookieError, match="no refresh token"):
        c.load(dict(codec().dump(session(refresh_token=None))))
    assert c.load(dict(codec().dump(session()))).refresh_token == "RT-secret"


def test_no_cookie_is_no_session():
    assert codec().load({"unrelated": "x"}) is None


def test_owned_names():
    c = codec()
    names = c.owned_names({"_authproxy": "", "_authproxy_0": "", "_authproxy_login_abc": "", "app": "", "_authproxy_x": ""})
    assert sorted(names) == ["_authproxy", "_authproxy_0"]


def test_decoded_cache_still_checks_expiry_every_time():
    clock = {"now": NOW}
    c = codec(clock=lambda: clock["now"])
    cookies = dict(c.dump(session(refresh_token=None)))
    assert c.load(cookies) is not None                 # decoded and remembered
    assert c.load(cookies) is c.load(cookies)          # served from the cache
    clock["now"] = NOW + 301                           # the access token has expired meanwhile
    with pytest.raises(CookieError):
        c.load(cookies)


def test_decoded_cache_is_keyed_by_the_exact_value():
    c = codec()
    cookies = dict(c.dump(session()))
    c.load(cookies)
    (name, value), = cookies.items()
    with pytest.raises(CookieError):
        c.load({name: value[:-2] + ("AA" if value[-2:] != "AA" else "BB")})


def test_a_session_too_big_for_cookies_is_a_clear_error():
    from proxy.errors import SessionTooLarge
    with pytest.raises(SessionTooLarge, match="session.store: redis"):
        codec().dump(session(id_token="x" * 40_000))


# -- own_cookies -----------------------------------------------------------------------------------------

NAME = "_authproxy"


def request_with(cookie):
    return make_mocked_request("GET", "/", headers=CIMultiDict({"Cookie": cookie} if cookie is not None else {}))


@pytest.mark.parametrize("cookie", [
    None, "", "theme=dark", "_authproxy=1.abc-_DEF", "a=1; _authproxy=1.xyz; b=2", "_authproxy_0=1.aa; _authproxy_1=bb",
    "_authproxy=", "_authproxy=1.a; _authproxy=1.b", '_authproxy="1.a"', 'a="x; _authproxy=1.evil; b"',
    "_authproxy=1.a b", "_authproxyx=1.a", "_authproxy_x=1.a", "  _authproxy =  1.a  ;theme=dark", "_authproxy",
    "x_authproxy=1; _authproxy_02=1.c",
])
def test_agrees_with_aiohttps_parser(cookie):
    request = request_with(cookie)
    expected = {k: v for k, v in request.cookies.items()
                if k == NAME or (k.startswith(NAME + "_") and k[len(NAME) + 1:].isdigit())}
    found = own_cookies(request, NAME)
    assert {k: v for k, v in found.items() if k == NAME or k.startswith(NAME + "_")} == expected


def test_header_without_the_name_is_not_parsed():
    assert own_cookies(request_with("theme=dark; lang=en"), NAME) == {}
