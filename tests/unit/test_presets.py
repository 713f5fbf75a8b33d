"""Presets fill in endpoints and claim names; the operator's values win; claim paths find nested claims."""

import pytest

from proxy.config import ClaimsConfig
from proxy.errors import ConfigError, TokenValidationError
from proxy.session import Identity, claim_at
from tests.unit.conftest import make_config

BASE = {"client_id": "cid", "client_secret": "s", "issuer": None}


def provider(**fields):
    return make_config(provider={**BASE, **fields}).provider


def test_github_preset_and_enterprise_base_url():
    p = provider(type="github")
    assert p.protocol == "oauth2" and p.use_userinfo
    assert p.authorization_endpoint == "https://github.com/login/oauth/authorize"
    assert p.userinfo_endpoint == "https://api.github.com/user"
    assert p.claims.user == "id" and p.claims.preferred_username == "login"
    ghe = provider(type="github", base_url="https://ghe.example.com")
    assert ghe.token_endpoint == "https://ghe.example.com/login/oauth/access_token"
    assert ghe.userinfo_endpoint == "https://ghe.example.com/api/v3/user"


def test_preset_values_can_be_overridden():
    p = provider(type="github", token_endpoint="http://127.0.0.1:1/token", claims={"user": "login"})
    assert p.token_endpoint == "http://127.0.0.1:1/token" and p.claims.user == "login"
    assert p.claims.preferred_username == "login"      # the rest of the preset's mapping stays


def test_oidc_presets():
    assert provider(type="google").issuer == "https://accounts.google.com"
    assert provider(type="microsoft", tenant="t-1").issuer == "https://login.microsoftonline.com/t-1/v2.0"
    gitlab = provider(type="gitlab", base_url="https://git.example.com")
    assert gitlab.issuer == "https://git.example.com" and gitlab.use_userinfo
    assert provider(type="keycloak", issuer="https://kc.example.com/realms/r").protocol == "oidc"


@pytest.mark.parametrize("fields,path,fragment", [
    ({"type": "microsoft"}, "provider.tenant", "tenant"),
    ({"type": "microsoft", "tenant": "common"}, "provider.tenant", "any directory"),
    ({"type": "keycloak"}, "provider.issuer", "realm URL"),
])
def test_preset_problems(fields, path, fragment):
    with pytest.raises(ConfigError) as info:
        provider(**fields)
    assert [str(p) for p in info.value.problems if p.path == path and fragment in p.message]


def test_claim_paths():
    claims = {"sub": "u1", "realm_access": {"roles": ["a", "b"]}, "https://x.example/groups": ["g"],
              "email": "e@x", "email_verified": False, "id": 42}
    assert claim_at(claims, "realm_access.roles") == ["a", "b"]
    assert claim_at(claims, "https://x.example/groups") == ["g"]
    assert claim_at(claims, "missing.path") is None
    ident = Identity.from_claims(claims, ClaimsConfig(groups="realm_access.roles"))
    assert ident.groups == ("a", "b") and ident.email is None          # unverified email dropped
    assert Identity.from_claims(claims, user_path="id").sub == "42"     # numeric ids become strings
    with pytest.raises(TokenValidationError):
        Identity.from_claims({"email": "x"})


# -- dex, authentik, zitadel, django-oauth-toolkit; Entra's Graph; Google's hosted domains --------------------


def test_dex_asks_for_groups_and_a_refresh_token():
    p = provider(type="dex", issuer="https://dex.example.com/dex")
    assert p.scopes == ["openid", "email", "profile", "groups", "offline_access"]
    assert p.claims.groups == "groups" and p.issuer == "https://dex.example.com/dex"


def test_authentik_takes_the_applications_issuer():
    p = provider(type="authentik", issuer="https://ak.example.com/application/o/myapp/")
    assert p.issuer == "https://ak.example.com/application/o/myapp/" and "offline_access" in p.scopes
    assert p.claims.groups == "groups"


def test_zitadel_reads_roles_as_groups_from_userinfo():
    p = provider(type="zitadel", issuer="https://my.zitadel.cloud")
    assert p.claims.groups == "urn:zitadel:iam:org:project:roles" and p.use_userinfo
    assert provider(type="zitadel", issuer="https://my.zitadel.cloud", use_userinfo=False).use_userinfo is False


def test_django_oauth_toolkit_issuer_is_below_base_url_and_sub_stays_the_user():
    p = provider(type="django-oauth-toolkit", base_url="https://accounts.example.com/")
    assert p.issuer == "https://accounts.example.com/o"
    assert p.scopes == ["openid", "email", "profile"]
    assert p.claims.user == "sub" and p.protocol == "oidc"
    mounted = provider(type="django-oauth-toolkit", issuer="https://accounts.example.com/oauth")
    assert mounted.issuer == "https://accounts.example.com/oauth"


def test_microsoft_graph_url_defaults_to_the_global_cloud_and_can_be_set():
    assert provider(type="microsoft", tenant="t-1").microsoft_graph_url == "https://graph.microsoft.com"
    us = provider(type="microsoft", tenant="t-1", microsoft_graph_url="https://graph.microsoft.us")
    assert us.microsoft_graph_url == "https://graph.microsoft.us"
    assert provider(issuer="https://idp.example.com").microsoft_graph_url is None


def test_google_hosted_domain_is_sent_as_hd_only_when_there_is_one():
    one = provider(type="google", google_hosted_domains=["Example.COM"])
    assert one.google_hosted_domains == ["example.com"] and one.extra_authorize_params == {"hd": "example.com"}
    two = provider(type="google", google_hosted_domains=["example.com", "example.org"])
    assert two.extra_authorize_params == {}
    mixed = provider(type="google", google_hosted_domains=["example.com"],
                     extra_authorize_params={"access_type": "offline"})
    assert mixed.extra_authorize_params == {"hd": "example.com", "access_type": "offline"}
    assert provider(type="google").extra_authorize_params == {}


@pytest.mark.parametrize("fields,path,fragment", [
    ({"type": "dex"}, "provider.issuer", "Dex's issuer"),
    ({"type": "authentik"}, "provider.issuer", "/application/o/myapp/"),
    ({"type": "authentik", "issuer": "https://ak.example.com/"}, "provider.issuer",
     "not an authentik application's issuer"),
    ({"type": "zitadel"}, "provider.issuer", "instance's issuer"),
    ({"type": "django-oauth-toolkit"}, "provider.base_url", "<base_url>/o"),
    ({"type": "oidc", "issuer": "https://idp.example.com", "microsoft_graph_url": "https://graph.microsoft.com"},
     "provider.microsoft_graph_url", "only with type: microsoft"),
    ({"type": "keycloak", "issuer": "https://kc.example.com/realms/r", "google_hosted_domains": ["example.com"]},
     "provider.google_hosted_domains", "only with type: google"),
    ({"type": "google", "google_hosted_domains": ["https://example.com"]}, "provider.google_hosted_domains[0]",
     "not a domain name"),
    ({"type": "google", "google_hosted_domains": ["*.example.com"]}, "provider.google_hosted_domains[0]",
     "not a domain name"),
    ({"type": "google", "google_hosted_domains": ["user@example.com"]}, "provider.google_hosted_domains[0]",
     "not a domain name"),
])
def test_new_preset_problems(fields, path, fragment):
    with pytest.raises(ConfigError) as info:
        provider(**fields)
    assert [str(p) for p in info.value.problems if p.path == path and fragment in p.message], info.value.problems


def test_an_authentik_issuer_elsewhere_is_taken_when_every_endpoint_is_given():
    p = provider(type="authentik", issuer="https://ak.example.com/", authorization_endpoint="https://ak.example.com/a",
                 token_endpoint="https://ak.example.com/t", jwks_uri="https://ak.example.com/j")
    assert p.issuer == "https://ak.example.com/"
