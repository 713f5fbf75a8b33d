"""Properties of the three functions that stand between an attacker's bytes and a decision.

- the cookie codec (``crypto.Sealer.open``, ``cookies.CookieCodec.load``): nothing but what we sealed ever
  comes out, and anything else is a ``CookieError`` — never another exception, which would be a 500;
- the redirect guard (``redirects.safe_redirect``): whatever the target, a browser following the result stays on
  ``public_url``'s origin — checked with a browser-like reading of the URL, not with the guard's own parser;
- path normalisation (``paths.normalize_path``): the result starts with "/", has no dot segments, is a
  fixed point, agrees with an independent resolver (``posixpath.normpath``), and a path that routes under a
  prefix really is under it.

Examples are built from fragments attackers use (schemes, slashes and backslashes, percent-encodings, "@",
hosts, controls) mixed with arbitrary text. CI runs 200 examples per property (profile "ci"); see
tests/fuzz/README.md for a long run (``HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import time
import warnings
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from proxy.config import Config, parse_config
from proxy.cookies import CookieCodec
from proxy.crypto import Sealer
from proxy.errors import BadRequest, CookieError
from proxy.redirects import safe_redirect
from proxy.session import Identity, Session
from proxy.paths import normalize_path
from proxy.upstream import Upstream

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=100_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# On a failure, Hypothesis' pytest plugin imports its patch writer (libcst), whose import raises a
# DeprecationWarning (mypy_extensions.TypedDict) — an INTERNALERROR under ``filterwarnings = error`` that
# hides the falsifying example. Importing it here first, with that warning ignored, keeps reports readable.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

SECRET = b"k" * 32
OTHER = b"o" * 32
COOKIE = "_authproxy"
PUBLIC_URLS = ("https://app.example.com", "http://127.0.0.1:8080")
PREFIXES = ("/public", "/api/v1", "/a")


def make_config(public_url: str = PUBLIC_URLS[0]) -> Config:
    return parse_config({
        "public_url": public_url,
        "provider": {"issuer": "https://idp.example.com", "client_id": "cid", "client_secret": "csecret"},
        "cookie": {"secret": base64.urlsafe_b64encode(SECRET).decode(), "name": COOKIE},
        "upstreams": [{"path": prefix, "url": "http://127.0.0.1:9"} for prefix in (*PREFIXES, "/")],
    }, source="<fuzz>", environ={})      # built at import, before conftest's fixture clears AUTHPROXY_*


CONFIGS = {url: make_config(url) for url in PUBLIC_URLS}
CONFIG = CONFIGS[PUBLIC_URLS[0]]
SEALER = Sealer([SECRET])
CODEC = CookieCodec(CONFIG.cookie, SEALER, clock=time.time)
ALICE = Session(identity=Identity(sub="alice", email="alice@example.test", groups=("staff",)),
                access_token="at-" + "x" * 40, created_at=time.time(), expires_at=time.time() + 3600,
                refresh_token="rt", id_token="h.p.s-" + "y" * 3000, id="s1")
SMALL = Session(identity=Identity(sub="bob", groups=("g",)), access_token="at", created_at=time.time(), id="s2")
ALICE_PAIRS = CODEC.dump(ALICE)                       # two chunks: the ID token makes it big
assert len(ALICE_PAIRS) >= 2

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# -- the cookie codec ------------------------------------------------------------------------------------------

cookie_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=B64URL, max_size=300).map(lambda s: "1." + s),
    st.binary(max_size=300).map(lambda b: "1." + base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(PROFILE)
@given(value=cookie_text, aad=st.sampled_from([COOKIE.encode(), b"", b"_authproxy_login_x"]))
@example(value="1.", aad=COOKIE.encode())
@example(value="1." + "A" * 43, aad=COOKIE.encode())
@example(value="1.\udcff", aad=COOKIE.encode())
def test_random_text_never_opens(value, aad):
    with pytest.raises(CookieError):
        SEALER.open(value, aad)


@st.composite
def mutated(draw, original: str) -> str:
    """``original`` with one to three edits: flips, deletions, insertions, truncation, swaps."""
    value = original
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "swap", "case"]))
        i = draw(st.integers(0, max(len(value) - 1, 0)))
        if kind == "flip" and value:
            value = value[:i] + draw(st.sampled_from(B64URL + ".=!~")) + value[i + 1:]
        elif kind == "delete":
            value = value[:i] + value[i + draw(st.integers(1, 8)):]
        elif kind == "insert":
            value = value[:i] + draw(st.text(min_size=1, max_size=4)) + value[i:]
        elif kind == "truncate":
            value = value[:i]
        elif kind == "swap" and len(value) > i + 1:
            value = value[:i] + value[i + 1] + value[i] + value[i + 2:]
        elif kind == "case" and value:
            value = value[:i] + value[i].swapcase() + value[i + 1:]
    return value


SEALED = SEALER.seal(b'{"the":"plaintext"}', COOKIE.encode())


@settings(PROFILE)
@given(value=mutated(SEALED))
def test_a_tampered_value_yields_nothing_but_the_sealed_plaintext(value):
    """Integrity: any edit fails. Base64url is decoded canonically, so no other spelling (a dropped or added
    "=", a skipped non-alphabet character, a spare bit) opens to what was sealed either (issue 13)."""
    try:
        opened = SEALER.open(value, COOKIE.encode())
    except CookieError:
        return
    assert value == SEALED and opened == b'{"the":"plaintext"}'


@settings(PROFILE)
@given(value=mutated(SEALED), aad=st.sampled_from([b"_authproxy_0", b"_authproxy_login_x", b"other", b""]))
def test_a_value_never_opens_for_another_purpose(value, aad):
    with pytest.raises(CookieError):
        SEALER.open(value, aad)


def test_another_secret_never_opens():
    with pytest.raises(CookieError):
        Sealer([OTHER]).open(SEALED, COOKIE.encode())


cookie_names = st.sampled_from([COOKIE, *(f"{COOKIE}_{i}" for i in range(10)), f"{COOKIE}_login_x",
                                f"{COOKIE}_x", "other", f"{COOKIE}_-1", f"{COOKIE}_00"])
chunk_values = st.one_of(cookie_text, *(st.just(v) for _, v in ALICE_PAIRS),
                         *(mutated(v) for _, v in ALICE_PAIRS))


@settings(PROFILE)
@given(cookies=st.dictionaries(cookie_names, chunk_values, max_size=8))
def test_codec_load_is_none_alice_or_cookie_error(cookies):
    """Random cookie jars, made partly of real chunks: no session, alice's own, or CookieError — nothing else."""
    try:
        session = CODEC.load(cookies)
    except CookieError:
        return
    assert session is None or session == ALICE


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3),
                           max_leaves=6)


@st.composite
def session_shaped(draw) -> object:
    """A payload shaped like a session but with any field of any JSON type: another version's cookie."""
    good = json.loads(SMALL.to_bytes())
    for name in draw(st.sets(st.sampled_from(sorted(good)), max_size=3)):
        good[name] = draw(json_values)
    identity = good.get("identity")
    if isinstance(identity, dict) and identity:
        for name in draw(st.sets(st.sampled_from(sorted(identity)), max_size=2)):
            identity[name] = draw(json_values)
    return good


@settings(PROFILE)
@given(payload=st.one_of(json_values, session_shaped()))
@example(payload={**json.loads(SMALL.to_bytes()), "created_at": "yesterday"})       # TypeError in load: a 500
@example(payload={**json.loads(SMALL.to_bytes()), "identity": {"sub": 42, "groups": [1]}})
def test_a_sealed_payload_of_the_wrong_shape_is_cookie_error(payload):
    """Only our key seals, but a cookie written by another version of authproxy (an upgrade rolled back, a
    changed field) is still "a bad cookie": an anonymous user, never a crash on every request."""
    sealed = SEALER.seal(json.dumps(payload).encode(), COOKIE.encode())
    try:
        session = CODEC.load({COOKIE: sealed})
    except CookieError:
        return
    assert isinstance(session, Session)
    assert isinstance(session.identity.sub, str) and session.identity.sub
    assert isinstance(session.access_token, str)
    assert isinstance(session.created_at, (int, float)) and not isinstance(session.created_at, bool)
    assert session.expires_at is None or isinstance(session.expires_at, (int, float))
    assert all(isinstance(g, str) for g in session.identity.groups)
    for value in (session.identity.email, session.identity.preferred_username, session.identity.name,
                  session.refresh_token, session.id_token):
        assert value is None or isinstance(value, str)


# -- the redirect guard ----------------------------------------------------------------------------------------

SCHEMES = ["", "http:", "https:", "HTTPS:", "hTtP:", "javascript:", "data:", "ftp:", "file:", "java\tscript:",
           " http:", "\x00https:"]
SLASHES = ["/", "//", "///", "\\", "\\\\", "/\\", "\\/", "%2F", "%2f", "%5C", "%5c", "%252F", "%25252F", "/%2F",
           "\t", "\n", "\r", "%09", "%0a", "%0d", "%0D%0A", "\x00", "%00", " ", "%20", "/./", "/../", ".", "..",
           "\u2215", "\uff0f", "\u3002"]
HOSTS = ["evil.example", "app.example.com", "APP.example.com", "app.example.com:443", "app.example.com:444",
         "app.example.com.evil.example", "127.0.0.1", "127.0.0.1:8080", "127.0.0.1:80", "[::1]", "xn--pp-8cd.com",
         "аpp.example.com", "localhost", "0x7f000001", "evil.example:8080"]
MIDDLES = ["@", "%40", ":", "#", "?", ";", "&", "=", "user:pw@", "app.example.com@", "127.0.0.1:8080@", "\\@",
           "#@", "?@", "%23", "%3F"]
TAILS = ["", "/", "/path", "?q=1", "#frag", "/%2e%2e/", "/..", "\r\nSet-Cookie: a=b", "%0d%0aSet-Cookie:a=b"]

fragment = st.one_of(st.sampled_from(SCHEMES), st.sampled_from(SLASHES), st.sampled_from(HOSTS),
                     st.sampled_from(MIDDLES), st.sampled_from(TAILS), st.text(max_size=4))
redirect_targets = st.one_of(st.lists(fragment, min_size=1, max_size=8).map("".join), st.text(max_size=40))


def browser_reading(url: str) -> tuple[str, str, str]:
    """(scheme, host[:port], path) as a WHATWG-URL browser reads an absolute URL: leading/trailing C0 controls
    and spaces stripped, tabs and newlines removed anywhere, "\\" read as "/" for http(s)."""
    url = url.strip("".join(map(chr, range(0x21)))).replace("\t", "").replace("\n", "").replace("\r", "")
    scheme, sep, rest = url.partition(":")
    if not sep:
        return "", "", url
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        rest = rest.replace("\\", "/")
    parts = urlsplit(f"{scheme}:{rest}")
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[:-len(default)]
    return scheme, netloc, parts.path


@settings(PROFILE)
@given(target=redirect_targets, public_url=st.sampled_from(PUBLIC_URLS),
       default=st.sampled_from(["/", "/home", "//evil.example", "/oauth2/signed_out"]))
@example(target="/\\evil.example", public_url=PUBLIC_URLS[0], default="/")
@example(target="https://app.example.com\\@evil.example", public_url=PUBLIC_URLS[0], default="/")
@example(target="/%2F%2Fevil.example", public_url=PUBLIC_URLS[0], default="/")
def test_safe_redirect_never_leaves_the_public_origin(target, public_url, default):
    config = CONFIGS[public_url]
    origin = config.public_origin
    result = safe_redirect(target, config, default=default)
    assert result.startswith(origin + "/")
    assert not any(ord(c) < 0x21 or ord(c) == 0x7f or c == "\\" for c in result), result
    scheme, host, path = browser_reading(result)
    assert f"{scheme}://{host}" == origin, (target, result)
    assert not path.startswith("//")
    # Decoding what the browser will request must not turn the path into a scheme-relative one either.
    assert not unquote(unquote(path)).replace("\\", "/").startswith("//")
    # A fixed point: re-checking changes nothing (but a fragment, which only a relative target keeps).
    assert safe_redirect(result, config).split("#")[0] == result.split("#")[0]


# -- path normalisation ------------------------------------------------------------------------------------------

PATH_FRAGMENTS = ["/", "//", "\\", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "%5C", "%25",
                  "%252e", "%252F", "a", "b", "admin", "public", "api", "v1", ";", "..;", "%3b", "~", "%7e", "%c3%a9",
                  "é", "%ff", "%00", "?", "#", "%3f", "%23", " ", "%20", "+", "@", ":"]
raw_paths = st.one_of(
    st.lists(st.sampled_from(PATH_FRAGMENTS), max_size=12).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=30).map(lambda s: "/" + s),
)


def reference_resolution(raw_path: str) -> str:
    """What a server that decodes once and resolves dot segments serves for ``raw_path`` — written apart from
    ``normalize_path``, on top of ``posixpath.normpath`` (RFC 3986 §5.2.4 plus collapsed empty segments)."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    decoded = unquote(path, errors="strict").replace("\\", "/")
    return posixpath.normpath("/" + decoded.lstrip("/"))


def _normalise(raw_path: str) -> str | None:
    try:
        return normalize_path(raw_path)
    except (BadRequest, UnicodeDecodeError):
        return None      # refused (NUL, invalid UTF-8): the caller answers 400


@settings(PROFILE)
@given(raw=raw_paths)
@example(raw="/public/%2e%2e/admin")
@example(raw="/public%2F..%2Fadmin")
@example(raw="/public/..\\admin")
@example(raw="/%2e%2e/%2e%2e/etc/passwd")
def test_normalised_paths_are_clean_and_stable(raw):
    result = _normalise(raw)
    assume(result is not None)
    assert result.startswith("/")
    assert "//" not in result and "\\" not in result
    segments = unquote(result).split("/")
    assert "." not in segments and ".." not in segments, result
    assert _normalise(result) == result, "normalising twice changes the path"


@settings(PROFILE)
@given(raw=raw_paths)
def test_normalised_paths_agree_with_an_independent_resolver(raw):
    result = _normalise(raw)
    assume(result is not None)
    assert (unquote(result).rstrip("/") or "/") == reference_resolution(raw)


UPSTREAMS = [Upstream(u, client=None) for u in CONFIG.upstreams]        # type: ignore[arg-type]


@settings(PROFILE)
@given(raw=raw_paths, prefix=st.sampled_from(PREFIXES))
@example(raw="/public/../admin", prefix="/public")
@example(raw="/x/%2e%2e/public/y", prefix="/public")
@example(raw="/publicity", prefix="/public")
def test_a_path_routed_under_a_prefix_really_is_under_it(raw, prefix):
    """Both ways: what matches a prefix resolves under it, and what resolves under it matches."""
    result = _normalise(raw)
    assume(result is not None)
    upstream = next(u for u in UPSTREAMS if u.prefix == prefix)
    served = reference_resolution(raw)
    under = served == prefix or served.startswith(prefix + "/")
    assert upstream.matches(result) == under, (raw, result, served)
