"""Access rules: authorize() for each rule, rule choice per upstream, skip_auth
matching on the normalised path, api_paths and CORS headers for the proxy's own denials."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.authz import (authorize, cors_headers, is_api_path, is_preflight,
                         rules_for, skips_auth)
from proxy.config import AuthorizationConfig
from proxy.errors import BadRequest, ConfigError
from proxy.gate import route_path
from proxy.session import Identity
from tests.unit.conftest import make_config

BOB = Identity(sub="bob", email="bob@example.com", groups=("staff", "bob-group"))


def rules(**lists) -> AuthorizationConfig:
    return AuthorizationConfig(**lists)


def allowed(identity: Identity, **lists) -> bool:
    return authorize(identity, rules(**lists)).allowed


def test_no_rules_let_any_signed_in_user_in():
    assert allowed(Identity(sub="x"))
    assert not rules().restricts


@pytest.mark.parametrize("email,domains,expected", [
    ("bob@example.com", ["example.com"], True),
    ("Bob@EXAMPLE.com", ["Example.COM"], True),           # case-insensitive on both sides
    ("bob@example.com", ["other.com", "example.com"], True),
    ("bob@sub.example.com", ["example.com"], False),        # exact domain, not a suffix
    ("bob@example.com.evil", ["example.com"], False),
    ("bob@notexample.com", ["example.com"], False),
    ("bob@evil.test@example.com", ["example.com"], False),  # several "@": matches nothing
    ("bob@example.com@evil.test", ["evil.test"], False),
    ("@example.com", ["example.com"], False),               # empty local part
    ("bob@", ["*"], False),
    ("example.com", ["example.com"], False),                # no "@" at all
    ("bob@anything.test", ["*"], True),                     # "*" = any verified email
    ("a@b@anything.test", ["*"], False),
])
def test_email_domains(email, domains, expected):
    assert allowed(Identity(sub="u", email=email), email_domains=domains) is expected


def test_identity_without_email_fails_every_email_rule():
    nobody = Identity(sub="u")
    assert not allowed(nobody, email_domains=["*"])
    assert not allowed(nobody, allowed_emails=["u@example.com"])
    assert allowed(nobody, allowed_users=["u"])


def test_unverified_email_is_not_an_email():
    ident = Identity.from_claims({"sub": "u", "email": "u@example.com", "email_verified": False})
    assert ident.email is None
    assert not allowed(ident, email_domains=["example.com"])
    assert not allowed(ident, allowed_emails=["u@example.com"])
    verified = Identity.from_claims({"sub": "u", "email": "u@example.com", "email_verified": True})
    assert allowed(verified, email_domains=["example.com"])


def test_allowed_emails_exact_and_case_insensitive():
    assert allowed(BOB, allowed_emails=["BOB@example.com"])
    assert allowed(Identity(sub="b", email="Bob@Example.com"), allowed_emails=["bob@example.com"])
    assert not allowed(BOB, allowed_emails=["bob@example.co"])
    assert not allowed(Identity(sub="b", email="x@bob@example.com"), allowed_emails=["x@bob@example.com"])


def test_allowed_groups_any_of():
    assert allowed(BOB, allowed_groups=["admins", "staff"])
    assert not allowed(BOB, allowed_groups=["admins"])
    assert not allowed(BOB, allowed_groups=["STAFF"])          # group names are exact
    assert not allowed(Identity(sub="bob"), allowed_groups=["staff"])


def test_allowed_users_by_sub():
    assert allowed(BOB, allowed_users=["alice", "bob"])
    assert not allowed(BOB, allowed_users=["Bob"])


def test_every_non_empty_list_must_match():
    assert allowed(BOB, email_domains=["example.com"], allowed_groups=["staff"], allowed_users=["bob"])
    decision = authorize(BOB, rules(email_domains=["example.com"], allowed_groups=["admins"]))
    assert not decision.allowed and decision.reason.startswith("allowed_groups")
    decision = authorize(BOB, rules(email_domains=["other.com"], allowed_groups=["staff"]))
    assert not decision.allowed and decision.reason.startswith("email_domains")


def test_per_upstream_rules_replace_the_global_ones():
    config = make_config(
        authorization={"allowed_groups": ["staff"]},
        upstreams=[{"path": "/", "url": "http://127.0.0.1:9"},
                   {"path": "/admin", "url": "http://127.0.0.1:9", "authorization": {"allowed_users": ["root"]}},
                   {"path": "/open", "url": "http://127.0.0.1:9", "authorization": {}}])
    root, admin, open_ = config.upstreams
    assert authorize(BOB, rules_for(config, root)).allowed
    assert not authorize(BOB, rules_for(config, admin)).allowed          # staff is not enough there
    assert authorize(Identity(sub="root"), rules_for(config, admin)).allowed   # nor needed
    assert authorize(Identity(sub="anyone"), rules_for(config, open_)).allowed  # empty rules: anyone signed in


# -- skip_auth, api_paths, CORS -------------------------------------------------------------------


def request(method: str, raw_path: str, **headers: str):
    return make_mocked_request(method, raw_path, headers=headers)


@pytest.mark.parametrize("raw,key", [
    ("/a/b", "/a/b"),
    ("/a//b/", "/a/b/"),
    ("/a%20b?q=/public/", "/a%20b"),
    ("/admin;jsessionid=1/x", "/admin/x"),              # segment parameters never take part in matching
    ("/admin%3Bjsessionid=1/x", "/admin/x"),            # nor encoded ones (the app gets them decoded)
    ("/admin/;x/y;a=b;c", "/admin/y"),
    ("/public/app.jsp;x.png", "/public/app.jsp"),
])
def test_route_path_is_the_match_key(raw, key):
    assert route_path(request("GET", raw)) == key


@pytest.mark.parametrize("raw", [
    "/public/../admin", "/public/%2e%2e/admin", "/public%2F..%2Fadmin", "/a/./b/", "/a/b/..", "/../../x",
    "/public/..;/admin", "/public/.;x/admin", "/public\\admin", "/public/..%5cadmin",
])
def test_route_path_refuses_ambiguous_paths(raw):
    with pytest.raises(BadRequest):
        route_path(request("GET", raw))


SKIP = make_config(skip_auth=[{"path": "^/public/", "methods": ["get", "HEAD"]}, {"path": "^/health$"}])


@pytest.mark.parametrize("method,raw,expected", [
    ("GET", "/public/logo.png", True),
    ("HEAD", "/public/a%20b", True),
    ("POST", "/public/logo.png", False),                  # not in the rule's methods
    ("DELETE", "/health", True),                          # no methods = every method
    ("GET", "/health/x", False),
    ("GET", "/admin?x=/public/", False),                  # the query never takes part
    ("GET", "/admin?/public/", False),
    ("GET", "/public%2flogo.png", False),                 # an encoded "/" hides a segment boundary
    ("GET", "/x/public/logo.png", False),
    ("GET", "/public;x/logo.png", True),                  # the app drops ";x": it is /public/logo.png
])
def test_skip_auth_matches_method_and_unambiguous_normalised_path(method, raw, expected):
    req = request(method, raw)
    assert skips_auth(SKIP, req, route_path(req)) is expected


PNG = make_config(skip_auth=[{"path": r"^/static/.*\.png$"}])


@pytest.mark.parametrize("raw,expected", [
    ("/static/logo.png", True),
    ("/static/app.jsp;x.png", False),          # Tomcat serves app.jsp: the rule sees what the app sees
    ("/static/app.jsp%3Bx.png", False),
    ("/static/logo.png;v=2", True),
])
def test_skip_auth_matches_without_segment_parameters(raw, expected):
    req = request("GET", raw)
    assert skips_auth(PNG, req, route_path(req)) is expected


def test_skip_auth_without_rules():
    req = request("GET", "/public/x")
    assert not skips_auth(make_config(), req, route_path(req))


@pytest.mark.parametrize("path,expected", [
    ("/api", True), ("/api/", True), ("/api/v1/x", True), ("/apiary", False), ("/v2/api", False),
    ("/graphql", True), ("/graphqlx", False), ("/", False),
])
def test_api_paths_match_whole_segments(path, expected):
    assert is_api_path(make_config(api_paths=["/api", "/graphql/"]), path) is expected


CORS = make_config(cors={"allowed_origins": ["https://spa.example.com"], "allow_preflight": True,
                         "preflight_paths": ["^/api(/|$)"]})


def test_cors_headers_only_for_an_allowed_origin():
    ok = cors_headers(CORS, request("GET", "/", Origin="https://spa.example.com"))
    assert ok["Access-Control-Allow-Origin"] == "https://spa.example.com"
    assert ok["Access-Control-Allow-Credentials"] == "true" and ok["Vary"] == "Origin"
    other = cors_headers(CORS, request("GET", "/", Origin="https://evil.example"))
    assert other == {"Vary": "Origin"}
    assert cors_headers(CORS, request("GET", "/")) == {"Vary": "Origin"}
    assert cors_headers(make_config(), request("GET", "/", Origin="https://spa.example.com")) == {}
    no_creds = make_config(cors={"allowed_origins": ["https://spa.example.com"], "allow_credentials": False})
    assert "Access-Control-Allow-Credentials" not in cors_headers(
        no_creds, request("GET", "/", Origin="https://spa.example.com"))


def test_preflight_needs_option_allowed_origin_and_request_method():
    spa = {"Origin": "https://spa.example.com", "Access-Control-Request-Method": "POST"}
    assert is_preflight(CORS, request("OPTIONS", "/api", **spa), "/api")
    assert not is_preflight(CORS, request("GET", "/api", **spa), "/api")
    assert not is_preflight(CORS, request("OPTIONS", "/api", Origin="https://spa.example.com"), "/api")
    assert not is_preflight(CORS, request("OPTIONS", "/api", **{**spa, "Origin": "https://evil.example"}), "/api")
    off = make_config(cors={"allowed_origins": ["https://spa.example.com"]})
    assert not is_preflight(off, request("OPTIONS", "/api", **spa), "/api")


def test_preflight_passes_only_to_the_listed_paths():
    spa = {"Origin": "https://spa.example.com", "Access-Control-Request-Method": "DELETE"}
    for path in ("/admin/users", "/", "/apiary", "/x/api"):
        req = request("OPTIONS", path, **spa)
        assert not is_preflight(CORS, req, route_path(req)), path
    req = request("OPTIONS", "/api;x/items", **spa)
    assert is_preflight(CORS, req, route_path(req))          # matched without segment parameters


def test_allow_preflight_needs_its_paths():
    with pytest.raises(ConfigError, match=r"cors\.preflight_paths: allow_preflight .* e\.g\. \[\"\^/api/\"\]"):
        make_config(cors={"allowed_origins": ["https://spa.example.com"], "allow_preflight": True})
