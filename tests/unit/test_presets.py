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
