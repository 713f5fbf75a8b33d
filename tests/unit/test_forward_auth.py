"""``/oauth2/auth`` through the real app: each form of the endpoint, each ingress's headers, and what a client
may not do with them (choose the rules, the path or the host the check is about)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.bearer import invalid_token_header
from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.session import Identity
from tests.support.unit_app import cookie_for, metadata_loaded, unit_app, unit_config
from tests.unit.conftest import make_session

API = {"Accept": "application/json"}
PAGE = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
LOOPBACK = ["127.0.0.1/32"]                      # the test client connects from here: a trusted ingress
ELSEWHERE = ["10.0.0.0/8"]                       # the test client is not a trusted ingress
ADMINS = {"rule_sets": [{"name": "admins", "allowed_groups": ["admins"]}]}
# A rule on the original request: only GET /app/… on app.example.com passes.
ON_REQUEST = {"rules": ['method == "GET" && path.startsWith("/app/") && host == "app.example.com"']}


@pytest.fixture
async def client(aiohttp_client):
    async def make(**sections):
        app = unit_app(unit_config(**sections))
        c = await aiohttp_client(app)
        await metadata_loaded(app)
        return app, c
    return make


def rd_of(location: str) -> str:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://app.example.com/oauth2/start"
    return parse_qs(parts.query)["rd"][0]


# -- the answer ----------------------------------------------------------------------------------------------


async def test_a_permitted_user_gets_202_with_our_headers_and_oauth2_proxys(client):
    app, c = await client()
    response = await c.get("/oauth2/auth", headers=cookie_for(app, make_session()))
    assert response.status == 202 and response.headers["Cache-Control"] == "no-store"
    h = response.headers
    assert (h["X-Forwarded-User"], h["X-Forwarded-Groups"]) == ("alice", "g1,g2")
    assert (h["X-Auth-Request-User"], h["X-Auth-Request-Email"], h["X-Auth-Request-Preferred-Username"],
            h["X-Auth-Request-Groups"]) == ("alice", "a@x.test", "alice", "g1,g2")
    assert "X-Auth-Request-Access-Token" not in h                 # only when asked for
    bare = await c.get("/oauth2/auth", headers=cookie_for(app, make_session(identity=Identity(sub="bob"))))
    # Always present, empty when unknown: a copied header must replace whatever the client sent under its name.
    assert [bare.headers[f"X-Auth-Request-{n}"] for n in ("Email", "Preferred-Username", "Groups")] == ["", "", ""]


async def test_the_access_token_is_handed_out_only_when_enabled(client):
    app, c = await client(forward_auth={"access_token": True})
    response = await c.get("/oauth2/auth", headers=cookie_for(app, make_session()))
    assert response.headers["X-Auth-Request-Access-Token"] == "AT-secret"


async def test_refusals_are_bare_statuses_for_nginx(client):
    app, c = await client(provider={"accept_bearer_tokens": True}, forward_auth=ADMINS)
    anonymous = await c.get("/oauth2/auth", headers=PAGE)           # even a page load: nginx cannot redirect
    assert (anonymous.status, anonymous.headers["WWW-Authenticate"], await anonymous.read()) == (401, "Bearer", b"")
    refused = await c.get("/oauth2/auth/admins", headers=cookie_for(app, make_session()))
    assert (refused.status, await refused.read()) == (403, b"")
    bad_token = await c.get("/oauth2/auth", headers={"Authorization": "Bearer a b"})
    assert bad_token.status == 401 and bad_token.headers["WWW-Authenticate"] == invalid_token_header()


# -- rules: named in the path, never read from the query ---------------------------------------------------


async def test_a_rule_set_named_in_the_path_is_checked_on_top_of_the_global_rules(client):
    app, c = await client(authorization={"allowed_users": ["alice", "root"]}, forward_auth=ADMINS)
    admin = cookie_for(app, make_session(identity=Identity(sub="root", groups=("admins",))))
    staff = cookie_for(app, make_session())
    outsider = cookie_for(app, make_session(identity=Identity(sub="eve", groups=("admins",))))
    assert (await c.get("/oauth2/auth/admins", headers=admin)).status == 202
    assert (await c.get("/oauth2/auth/admins", headers=staff)).status == 403
    assert (await c.get("/oauth2/auth/admins", headers=outsider)).status == 403       # the global rules too
    assert (await c.get("/oauth2/auth", headers=staff)).status == 202
    unknown = await c.get("/oauth2/auth/admin", headers=admin)                        # a typo fails closed
    assert unknown.status == 404


async def test_the_original_requests_query_passed_by_caddy_is_never_read_as_rules(client):
    """Caddy 2.6's forward_auth keeps the client's query on the check: every app URL with a query was a 400
    ("unknown parameter"), and a rule parameter in it would have been a rule the client chose."""
    app, c = await client(trusted_proxies=LOOPBACK, forward_auth=ADMINS)
    caddy = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/search?q=1&allowed_groups=g1", "X-Forwarded-Host":
             "app.example.com", "X-Forwarded-Proto": "https", **cookie_for(app, make_session())}
    assert (await c.get("/oauth2/auth?q=1&allowed_groups=g1", headers=caddy)).status == 202
    assert (await c.get("/oauth2/auth?page=2", headers=caddy)).status == 202
    # A client cannot loosen a rule set either: the one in the path holds whatever the query says.
    assert (await c.get("/oauth2/auth/admins?allowed_groups=g1", headers=caddy)).status == 403


async def test_a_check_written_for_the_old_query_rules_fails_closed(client):
    """nginx's old ``proxy_pass …/oauth2/auth?allowed_groups=admins``: ignoring it would let every signed-in
    user into an admins-only location, so it is a 400 that says what to write instead."""
    app, c = await client()
    response = await c.get("/oauth2/auth?allowed_groups=admins", headers=cookie_for(app, make_session()))
    assert response.status == 400 and response.content_type == "text/plain"
    assert "name a rule set in the path instead: /oauth2/auth/<name>" in await response.text()


def test_rule_set_names_are_path_segments_distinct_and_not_the_endpoints_words():
    base = unit_config().model_dump(mode="json")
    for rule_sets, fragment in (([{"name": "a/b"}], "one path segment"), ([{"name": "redirect"}], "choose another"),
                                ([{"name": "envoy"}], "choose another"), ([{"name": "x"}, {"name": "x"}], "twice")):
        with pytest.raises(ConfigError, match=fragment) as caught:
            parse_config({**base, "cookie": {"secret": "c" * 43}, "forward_auth": {"rule_sets": rule_sets}},
                         source="<test>", environ={})
        assert "forward_auth.rule_sets" in str(caught.value)


# -- the original request: from trusted ingresses only, normalised ------------------------------------------


# Exactly the headers each ingress's documentation says it sends with its check (and nothing else of ours).
INGRESSES = {
    "traefik": ("GET", "/oauth2/auth/redirect",   # forwardAuth: X-Forwarded-Method/-Proto/-Host/-Uri/-For
                {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com",
                 "X-Forwarded-Uri": "/app/page?x=1", "X-Forwarded-For": "203.0.113.9"}),
    "caddy": ("GET", "/oauth2/auth/redirect?x=1",   # forward_auth: X-Forwarded-Method/-Uri (+ reverse_proxy's)
              {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/app/page?x=1", "X-Forwarded-Host": "app.example.com",
               "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "Host": "app.example.com"}),
    "envoy": ("GET", "/oauth2/auth/envoy/app/page?x=1",   # ext_authz http_service path_prefix: method, Host
              {"Host": "app.example.com", "X-Forwarded-Proto": "https"}),
    "nginx": ("GET", "/oauth2/auth",   # auth_request with our example's proxy_set_header lines
              {"X-Original-URL": "https://app.example.com/app/page?x=1", "X-Original-Method": "GET"}),
    "haproxy": ("GET", "/oauth2/auth/redirect",   # deploy/haproxy/authproxy.lua (run for real in test_ingress.py)
                {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/app/page?x=1", "X-Forwarded-Host": "app.example.com",
                 "X-Forwarded-Proto": "https"}),
}


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_each_ingress_tells_the_original_request_its_own_way(client, ingress):
    app, c = await client(trusted_proxies=LOOPBACK, authorization=ON_REQUEST)
    method, path, headers = INGRESSES[ingress]
    allowed = await c.request(method, path, headers={**headers, **cookie_for(app, make_session())})
    assert allowed.status == 202
    redirecting = ingress != "nginx"
    anonymous = await c.request(method, path, headers={**headers, **PAGE}, allow_redirects=False)
    if redirecting:              # the ingress passes our answer on: the browser goes to sign in, and back
        assert anonymous.status == 302
        assert rd_of(anonymous.headers["Location"]) == "https://app.example.com/app/page?x=1"
    else:
        assert anonymous.status == 401 and await anonymous.read() == b""


@pytest.mark.parametrize("ingress", INGRESSES)
async def test_the_rules_see_the_original_method_path_and_host(client, ingress):
    app, c = await client(trusted_proxies=LOOPBACK, authorization=ON_REQUEST)
    method, path, headers = INGRESSES[ingress]
    session = cookie_for(app, make_session())
    if ingress == "envoy":
        other_path, other_method = path.replace("/app/", "/adm/"), "POST"
        other_host = {**headers, "Host": "admin.example.com"}
    elif ingress == "nginx":
        other_path, other_method = path, "GET"
        headers_p = {**headers, "X-Original-URL": "https://app.example.com/adm/page"}
        other_host = {**headers, "X-Original-URL": "https://admin.example.com/app/page"}
    else:
        other_path, other_method = path, "GET"
        headers_p = {**headers, "X-Forwarded-Uri": "/adm/page"}
        other_host = {**headers, "X-Forwarded-Host": "admin.example.com"}
    if ingress == "envoy":
        assert (await c.request(method, other_path, headers={**headers, **session})).status == 403
        assert (await c.request(other_method, path, headers={**headers, **session})).status == 403
    else:
        assert (await c.request(other_method, other_path, headers={**headers_p, **session})).status == 403
        post = {**headers, "X-Forwarded-Method": "POST", "X-Original-Method": "POST"}
        assert (await c.request(method, path, headers={**post, **session})).status == 403
    assert (await c.request(method, path, headers={**other_host, **session})).status == 403


async def test_forwarded_headers_from_anyone_but_a_trusted_proxy_are_not_believed(client):
    """A client talking to authproxy directly cannot claim the check is about another path or host: the rules
    see nothing (and deny), and a sign-in goes back to public_url, never to a host the client named."""
    app, c = await client(trusted_proxies=ELSEWHERE, authorization=ON_REQUEST)
    _, _, traefik = INGRESSES["traefik"]
    assert (await c.get("/oauth2/auth", headers={**traefik, **cookie_for(app, make_session())})).status == 403
    spoofed = {**traefik, "X-Forwarded-Host": "evil.example", **PAGE}
    anonymous = await c.get("/oauth2/auth/redirect", headers=spoofed, allow_redirects=False)
    assert anonymous.status == 302 and rd_of(anonymous.headers["Location"]) == "/"
    envoy = await c.get("/oauth2/auth/envoy/app/x", headers={"Host": "evil.example", **PAGE}, allow_redirects=False)
    assert rd_of(envoy.headers["Location"]) == "/"


@pytest.mark.parametrize(("name", "value"), [
    ("X-Forwarded-Uri", "/app/..%5cadmin"), ("X-Forwarded-Uri", "/app/%2e%2e/admin"), ("X-Forwarded-Uri", "app/x"),
    ("X-Forwarded-Uri", "/app/%252e"), ("X-Forwarded-Host", "app.example.com/evil"),
    ("X-Forwarded-Host", "app.example.com\\@evil"), ("X-Forwarded-Host", "user@evil.example"),
    ("X-Forwarded-Proto", "javascript"),
])
async def test_an_original_request_that_cannot_be_read_one_way_is_a_400(client, name, value):
    app, c = await client(trusted_proxies=LOOPBACK)
    _, path, headers = INGRESSES["traefik"]
    response = await c.get(path, headers={**headers, name: value, **cookie_for(app, make_session())})
    assert response.status == 400


async def test_the_original_path_is_normalised_as_a_proxied_one_is(client):
    app, c = await client(trusted_proxies=LOOPBACK, authorization=ON_REQUEST)
    _, path, headers = INGRESSES["traefik"]
    session = cookie_for(app, make_session())
    assert (await c.get(path, headers={**headers, "X-Forwarded-Uri": "//app/x", **session})).status == 202
    assert (await c.get(path, headers={**headers, "X-Forwarded-Uri": "/%61pp/x", **session})).status == 202
    assert (await c.get(path, headers={**headers, "X-Forwarded-Uri": "/adm;x/../app/x", **session})).status in (400,
                                                                                                               403)
    assert (await c.get(path, headers={**headers, "X-Forwarded-Host": "APP.example.com", **session})).status == 202


async def test_only_a_page_load_is_redirected_anything_else_gets_the_login_url(client):
    _, c = await client(trusted_proxies=LOOPBACK)
    _, path, headers = INGRESSES["traefik"]
    fetch = await c.get(path, headers={**headers, "Accept": "application/json", "Sec-Fetch-Mode": "cors"})
    assert fetch.status == 401
    assert rd_of((await fetch.json())["login_url"]) == "https://app.example.com/app/page?x=1"
    post = await c.get(path, headers={**headers, **PAGE, "X-Forwarded-Method": "POST"}, allow_redirects=False)
    assert post.status == 401                          # a form post cannot be replayed after signing in


@pytest.mark.parametrize("path", ["/oauth2/auth/redirect/", "/oauth2/auth/redirect/x", "/oauth2/auth/envoy",
                                  "/oauth2/auth/admins/redirect/x", "/oauth2/auth/admins/x", "/oauth2/authx"])
async def test_other_forms_of_the_endpoint_do_not_exist(client, path):
    _, c = await client(forward_auth=ADMINS)
    assert (await c.get(path, headers=API)).status == 404


async def test_envoy_and_a_rule_set(client):
    app, c = await client(trusted_proxies=LOOPBACK, forward_auth=ADMINS)
    root = cookie_for(app, make_session(identity=Identity(sub="root", groups=("admins",))))
    assert (await c.delete("/oauth2/auth/admins/envoy/x", headers=root)).status == 202
    assert (await c.delete("/oauth2/auth/admins/envoy/x", headers=cookie_for(app, make_session()))).status == 403


def test_identity_an_ingress_copies_is_never_a_header_injection():
    """A claim with CR/LF or a bidi override reaches the 202 empty (the ingress copies it as such), as it is
    left out of the headers sent to apps (identity.safe)."""
    from proxy.forward_auth import answer_headers
    session = make_session(identity=Identity(sub="alice", email="a@example.com\r\nX-Admin: 1",
                                             preferred_username="\u202eecila", groups=("ok", "bad\nX: 1")))
    headers = answer_headers(session, unit_config())
    assert headers["X-Auth-Request-User"] == "alice"
    assert headers["X-Auth-Request-Email"] == "" and headers["X-Auth-Request-Preferred-Username"] == ""
    assert headers["X-Auth-Request-Groups"] == ""
    assert all("\n" not in v and "\r" not in v and "\u202e" not in v for v in headers.values())


# -- step-up ---------------------------------------------------------------------------------------------------

MFA = "urn:example:mfa"


async def test_a_rule_sets_acr_is_asked_for_as_the_endpoints_form_answers(client):
    app, c = await client(forward_auth={"rule_sets": [{"name": "mfa", "acr": [MFA]}]})
    weak = cookie_for(app, make_session(acr="urn:example:pwd"))
    assert (await c.get("/oauth2/auth", headers=weak)).status == 202
    bare = await c.get("/oauth2/auth/mfa", headers=weak)                       # nginx: status and header only
    assert bare.status == 403 and await bare.read() == b""       # a 401 would go to nginx's error_page: the proxy
    assert 'error="insufficient_user_authentication"' in bare.headers["WWW-Authenticate"]
    assert f'acr_values="{MFA}"' in bare.headers["WWW-Authenticate"]
    page = await c.get("/oauth2/auth/mfa/redirect", allow_redirects=False,
                       headers={**weak, "Accept": "text/html", "Sec-Fetch-Mode": "navigate"})
    assert page.status == 302 and rd_of(page.headers["Location"]) == "/"
    assert "step_up" in parse_qs(urlsplit(page.headers["Location"]).query)
    api = await c.get("/oauth2/auth/mfa/redirect", headers={**weak, "Accept": "application/json"})
    assert api.status == 401 and "step_up=" in (await api.json())["login_url"]
    assert (await c.get("/oauth2/auth/mfa", headers=cookie_for(app, make_session(acr=MFA)))).status == 202


async def test_rule_sets_whose_acr_lists_share_nothing_refuse_with_a_403_not_a_sign_in(client):
    app, c = await client(authorization={"acr": ["urn:example:pwd"]},
                          forward_auth={"rule_sets": [{"name": "mfa", "acr": [MFA]}]})
    for acr in ("urn:example:pwd", MFA):
        response = await c.get("/oauth2/auth/mfa/redirect", allow_redirects=False,
                               headers={**cookie_for(app, make_session(acr=acr)), "Accept": "text/html"})
        assert response.status == 403
