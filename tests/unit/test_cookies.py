"""The cookie format: the codec's round trip, chunking, tampering, expiry, rotation and decoded-session
cache — every bad cookie is no session — and the one ``Cookie`` parser (``cookie_pairs``,
``request_cookies``, ``own_cookies``), which reads a header as the browser that sent it means it;
``private_when_setting_own``, which keeps shared caches away from responses that set our cookies."""

import base64
import tracemalloc

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from aiohttp import web

from proxy import cookies as cookies_module
from proxy.cookies import (CHUNK_SIZE, REPEATED, CookieCodec, cookie_pairs, own_cookies, private_cache_control,
                           private_when_setting_own, request_cookies)
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
    with pytest.raises(CookieError, match=r"cookie\.expire"):
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
    names = c.owned_names({"_authproxy": "", "_authproxy_0": "", "_authproxy_login_abc": "", "app": "",
                           "_authproxy_x": ""})
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
    with pytest.raises(SessionTooLarge, match=r"session\.store: redis"):
        codec().dump(session(id_token="x" * 40_000))


# -- own_cookies -----------------------------------------------------------------------------------------

NAME = "_authproxy"


def request_with(cookie):
    return make_mocked_request("GET", "/", headers=CIMultiDict({"Cookie": cookie} if cookie is not None else {}))


# What browsers send (RFC 6265 §5.4: pairs joined by "; ") and the cookies they mean. aiohttp's parser
# reads several of these differently (a pair ended at whitespace, the last duplicate winning, quotes
# unwrapped), which let an app plant a session inside another cookie's value.
BROWSER_READINGS = [
    (None, {}),
    ("", {}),
    ("theme=dark", {}),
    ("_authproxy=1.abc-_DEF", {"_authproxy": "1.abc-_DEF"}),
    ("a=1; _authproxy=1.xyz; b=2", {"_authproxy": "1.xyz"}),
    ("_authproxy_0=1.aa; _authproxy_1=bb", {"_authproxy_0": "1.aa", "_authproxy_1": "bb"}),
    ("_authproxy=", {"_authproxy": ""}),
    ('_authproxy="1.a"', {"_authproxy": '"1.a"'}),                 # quotes are part of the value
    ('a="x; _authproxy=1.evil; b"', {"_authproxy": "1.evil"}),      # a browser sent three pairs here
    ("_authproxy=1.a b", {"_authproxy": "1.a b"}),
    ("_authproxyx=1.a; _authproxy_x=1.a", {}),
    ("  _authproxy =  1.a  ;theme=dark", {"_authproxy": "1.a"}),
    ("_authproxy", {}),                                             # a nameless cookie whose value is "_authproxy"
    ("x_authproxy=1; _authproxy_02=1.c; _authproxy_\u00b2=1.d; _authproxy_99=1.e", {}),
    # The planted cookie of issue 13: chromium stores "pref=dark _authproxy=<mallory> \"" as one cookie, "pref".
    ('_authproxy=1.alice; pref=dark _authproxy=1.mallory "', {"_authproxy": "1.alice"}),
    ('pref=dark _authproxy=1.mallory "; _authproxy=1.alice', {"_authproxy": "1.alice"}),
]


@pytest.mark.parametrize(("cookie", "expected"), BROWSER_READINGS)
def test_reads_the_header_as_browsers_mean_it(cookie, expected):
    assert dict(own_cookies(request_with(cookie), NAME)) == expected


@pytest.mark.parametrize("cookie", [
    "_authproxy=1.a; _authproxy=1.b", "_authproxy=1.a; pref=x; _authproxy=1.a",
    "_authproxy_0=1.a; _authproxy_1=b; _authproxy_1=c",
])
def test_one_of_our_names_twice_is_no_session(cookie):
    found = own_cookies(request_with(cookie), NAME)
    assert REPEATED in found.values()
    c = codec()
    assert set(c.owned_names(found)) == set(found)          # so the cookie is cleared
    with pytest.raises(CookieError, match="more than once"):
        c.load(found)


def test_a_real_session_twice_is_no_session_either():
    c = codec()
    (name, value), = c.dump(session())
    found = own_cookies(request_with(f"{name}={value}; {name}={value}"), NAME)
    with pytest.raises(CookieError):
        c.load(found)


def test_cookie_pairs_split_only_at_semicolons():
    assert list(cookie_pairs('a=1; b=x y=2 "; c; =d; e=f=g')) == [
        ("a", "1"), ("b", 'x y=2 "'), ("", "c"), ("", "d"), ("e", "f=g")]


def test_request_cookies_is_parsed_once_and_keeps_the_first_value():
    request = request_with("a=1; b=2; a=3")
    cookies = request_cookies(request)
    assert request_cookies(request) is cookies
    assert dict(cookies) == {"a": "1", "b": "2"} and cookies.repeated == {"a"}


def test_chunk_names_are_ascii_digits_and_bounded():
    c = codec()
    names = ["_authproxy_0", "_authproxy_8", "_authproxy_\u00b2", "_authproxy_\u0663", "_authproxy_9", "_authproxy_00",
             "_authproxy_login_x", "_authproxy"]
    assert c.owned_names(dict.fromkeys(names, "v")) == ["_authproxy_0", "_authproxy_8", "_authproxy"]


def test_header_without_the_name_is_not_parsed():
    assert own_cookies(request_with("theme=dark; lang=en"), NAME) == {}


# -- canonical sealed values and the decoded-session cache -----------------------------------------------

def test_respelled_sealed_values_do_not_open():
    """Python's base64 decoder skips junk and ignores spare bits: each respelling used to open the same
    session and take a new cache entry (issue 13: 4,200 variants, +59 MiB)."""
    c = codec()
    (name, value), = c.dump(session())
    assert c.load({name: value}) == session()
    body = value[2:]
    variants = [value[:10] + "...." + value[10:], value[:10] + "~~~~" + value[10:], value + "====",
                value[:2] + body[:20] + "\n" + body[20:], value[:10] + "++++" + value[10:]]
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(body[-1])
    spare = {2: 4, 3: 2}.get(len(body) % 4)
    if spare:          # the same bytes, spelt with a spare bit set
        variants.append(value[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1])
    for variant in variants:
        with pytest.raises(CookieError):
            c.load({name: variant})
    assert len(c._cache) == 1


def test_the_decoded_cache_is_bounded_by_memory(monkeypatch):
    """Distinct big sessions (each a real sealed value) stay within the cache's byte budget."""
    monkeypatch.setattr(cookies_module, "DECODED_CACHE_BYTES", 1024 * 1024, raising=False)
    c = codec()
    cookies = [dict(c.dump(session(id_token="x" * 20_000, id=str(i)))) for i in range(150)]   # ≈ 3 MB opened
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for pairs in cookies:
            c.load(pairs)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2 * 1024 * 1024, f"the cache grew by {grown} bytes"
    assert c.cache_bytes <= 1024 * 1024
    assert c.load(cookies[-1]) == session(id_token="x" * 20_000, id="149")   # the newest are still there


# -- responses that set our cookies are private -------------------------------------------------------------

@pytest.mark.parametrize(("given", "made"), [
    ("public, max-age=3600", "private, max-age=3600"),
    ("", "private"),
    ("s-maxage=600, max-age=60, PUBLIC", "private, max-age=60"),
    ('no-cache="Set-Cookie, X", public, proxy-revalidate', 'private, no-cache="Set-Cookie, X"'),
    ("no-store", "private, no-store"),
    ("private", "private"),
])
def test_private_cache_control(given, made):
    assert private_cache_control(given) == made


async def _prepared(set_cookie: str | None, **headers: str) -> web.StreamResponse:
    response = web.Response(headers=headers)
    if set_cookie:
        response.headers.add("Set-Cookie", set_cookie)
    await private_when_setting_own("__Host-authproxy")(request_with(None), response)
    return response


async def test_a_response_that_sets_our_cookie_is_private():
    for ours in ("__Host-authproxy=1.x; Path=/", "__Host-authproxy_1=; Max-Age=0", "__Host-authproxy_login_s=1.y"):
        r = await _prepared(ours, **{"Cache-Control": "public, max-age=3600", "CDN-Cache-Control": "max-age=60",
                                     "Surrogate-Control": "max-age=60"})
        assert r.headers.getall("Cache-Control") == ["private, max-age=3600"]
        assert "CDN-Cache-Control" not in r.headers and "Surrogate-Control" not in r.headers


async def test_a_response_without_our_cookie_keeps_its_caching():
    for other in (None, "theme=dark", "__Host-authproxyx=1"):
        r = await _prepared(other, **{"Cache-Control": "public, max-age=3600"})
        assert r.headers["Cache-Control"] == "public, max-age=3600"


def test_host_prefixed_cookies_carry_what_browsers_require():
    """A "__Host-" cookie without Secure, with a Domain or another Path is dropped by the browser
    (RFC 6265bis §4.1.3.2): the session, its chunks and the login-state cookies all qualify."""
    from proxy.login import _login_cookie
    config = make_config()
    cfg = config.cookie
    assert cfg.name == "__Host-authproxy"
    c = CookieCodec(cfg, Sealer(cfg.keys))
    headers = [c.set_header(cfg.name, "1.x", 60), c.set_header(cfg.name + "_3", "1.x", 60), c.clear_header(cfg.name),
               _login_cookie(config, cfg.name + "_login_abc", "1.x", 60),
               _login_cookie(config, cfg.name + "_login_abc", "", 0)]
    for header in headers:
        attributes = [a.strip().lower() for a in header.split(";")[1:]]
        assert header.startswith("__Host-authproxy") and "secure" in attributes and "path=/" in attributes
        assert not [a for a in attributes if a.startswith("domain")]


# -- session controls: idle timeout, minimal cookies, the header budget -------------------------------------


def idle_codec(clock, idle="40s", **cookie):
    cfg = make_config(cookie={"name": "_authproxy", "idle_timeout": idle, **cookie}).cookie
    return CookieCodec(cfg, Sealer(cfg.keys), clock)


def test_idle_session_is_a_cookie_error_only_past_timeout_plus_touch_interval():
    now = [NOW]
    c = idle_codec(lambda: now[0])                     # 40 s: rewritten every 10 s, so it ends 40-50 s idle
    pairs = dict(c.dump(session(last_seen=NOW)))
    now[0] = NOW + 49.9
    assert c.load(pairs).last_seen == NOW              # idle 49.9 s: still signed in
    now[0] = NOW + 50.0
    with pytest.raises(CookieError, match="idle_timeout"):
        c.load(pairs)


def test_idle_without_last_seen_counts_from_sign_in():
    now = [NOW]
    c = idle_codec(lambda: now[0])
    pairs = dict(c.dump(session(created_at=NOW - 45, last_seen=None)))
    assert c.load(pairs) is not None                   # idle 45 s of 50
    now[0] = NOW + 5
    with pytest.raises(CookieError):
        c.load(pairs)


def test_last_seen_is_sealed_a_client_cannot_move_it():
    now = [NOW]
    c = idle_codec(lambda: now[0])
    value = c.dump(session(last_seen=NOW))[0][1]
    raw = bytearray(Sealer(c.config.keys).unwrap(value))
    raw[-20] ^= 1                                      # any change to the sealed bytes, last_seen's included
    forged = "1." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    now[0] = NOW + 60
    with pytest.raises(CookieError):
        c.load({"_authproxy": forged})


def test_idle_timeout_off_ignores_last_seen():
    now = [NOW]
    c = codec(clock=lambda: now[0])
    pairs = dict(c.dump(session(last_seen=NOW - 3000)))
    assert c.load(pairs) is not None


def test_minimal_cookie_leaves_out_only_the_id_token():
    full, minimal = codec(), idle_codec(lambda: NOW, idle=None, minimal=True)
    big = session(id_token="I" * 900)
    small_pairs = minimal.dump(big)
    opened = minimal.load(dict(small_pairs))
    assert opened.id_token is None
    assert opened == big.with_tokens(id_token=None)     # identity, tokens, sid, times all kept
    assert len(small_pairs[0][1]) < len(full.dump(big)[0][1]) - 1000


def test_header_budget_warns_once_an_hour_with_sizes_and_fixes_never_tokens(caplog):
    now = [NOW]
    c = idle_codec(lambda: now[0], idle=None, header_budget=4096)
    big = session(id_token="ID" + "i" * 3000, access_token="AT" + "a" * 1500)
    pairs = c.dump(big)
    size = sum(len(c.set_header(n, v, c.config.expire)) for n, v in pairs)
    assert size >= 3072
    caplog.set_level("WARNING", logger="authproxy.session")
    c.check_budget(big, pairs)
    c.check_budget(big, pairs)                          # the same hour: counted, not logged
    now[0] += 3601
    c.check_budget(big, pairs)
    lines = [r.getMessage() for r in caplog.records if "header budget" in r.getMessage()]
    assert len(lines) == 2
    assert f"{size} bytes of Set-Cookie in {len(pairs)} cookie(s)" in lines[0]
    assert "cookie.header_budget is 4096 (warning from 3072)" in lines[0]
    assert "1 sign-in(s)" in lines[0] and "2 sign-in(s)" in lines[1]
    for fix in ("cookie.minimal true", "session.store: redis", "fewer scopes"):
        assert fix in lines[0]
    for secret in ("ID" + "i" * 20, "AT" + "a" * 20, "RT-secret", pairs[0][1][:40]):
        assert secret not in lines[0] and secret not in lines[1]


def test_header_budget_is_quiet_below_three_quarters(caplog):
    c = codec()
    pairs = c.dump(session())
    caplog.set_level("WARNING", logger="authproxy.session")
    c.check_budget(session(), pairs)
    assert not [r for r in caplog.records if "header budget" in r.getMessage()]


def test_header_budget_warning_with_minimal_on_does_not_offer_it_again(caplog):
    c = idle_codec(lambda: NOW, idle=None, header_budget=1024, minimal=True)
    big = session(access_token="AT" + "a" * 1500)
    caplog.set_level("WARNING", logger="authproxy.session")
    c.check_budget(big, c.dump(big))
    [line] = [r.getMessage() for r in caplog.records if "header budget" in r.getMessage()]
    assert "cookie.minimal is on already" in line and "leaves out the ID token" not in line


def test_a_cached_session_nobody_sent_for_a_while_is_dropped(monkeypatch):
    """The soak (issue 19): each refresh and sign-in leaves a new cookie and the old one never comes back,
    so the cache held the last 4,096 sessions seen, long gone or not, and a worker grew for 20 minutes."""
    now = [1000.0]
    monkeypatch.setattr(cookies_module.time, "monotonic", lambda: now[0])
    c = codec()
    old = dict(c.dump(session(id="old")))
    kept = dict(c.dump(session(id="kept")))
    c.load(old)
    c.load(kept)
    now[0] += cookies_module.DECODED_CACHE_IDLE / 2
    c.load(kept)                                              # still sent: its idle time starts again
    now[0] += cookies_module.DECODED_CACHE_IDLE / 2 + 1
    c.load(dict(c.dump(session(id="new"))))                   # a miss sweeps
    assert len(c._cache) == 2 and all(entry[0].id != "old" for entry in c._cache.values())
    assert c.cache_bytes == sum(entry[1] for entry in c._cache.values())
