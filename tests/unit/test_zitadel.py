"""ZITADEL's roles claim — an object keyed by role name — becomes the groups, and nothing else does."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.provider import Provider, zitadel
from tests.unit.conftest import make_config

ROLES = "urn:zitadel:iam:org:project:roles"
ORG = {"231848297847848": "acme.zitadel.cloud"}


async def identity(token_claims: dict, **provider_fields):
    config = make_config(provider={"type": "zitadel", "issuer": "https://my.zitadel.cloud", **provider_fields})
    async with aiohttp.ClientSession() as http:
        return Provider(config.provider, "https://app.example.com/oauth2/callback", http).identity_from(token_claims)


async def test_role_names_are_the_groups():
    ident = await identity({"sub": "u1", ROLES: {"admin": ORG, "viewer": {**ORG, "99": "other.example"}}})
    assert ident.groups == ("admin", "viewer")


async def test_a_project_specific_roles_claim_is_read_the_same_way():
    path = "urn:zitadel:iam:org:project:285714285714285714:roles"
    ident = await identity({"sub": "u1", path: {"editor": ORG}}, claims={"groups": path})
    assert ident.groups == ("editor",)


@pytest.mark.parametrize("value", [
    "admin",                        # a string: Identity.from_claims would take it as ["admin"]
    ["admin", "viewer"],            # a list: would be taken as it is
    {"admin": "yes"},               # an object whose values are not grants
    {"admin": ["231848297847848"]},
    42,
])
async def test_a_roles_claim_of_another_shape_gives_no_groups(value, caplog):
    ident = await identity({"sub": "u1", ROLES: value})
    assert ident.groups == ()
    assert "not an object of roles" in caplog.text


async def test_no_roles_claim_no_groups_and_no_warning(caplog):
    assert (await identity({"sub": "u1"})).groups == ()
    assert caplog.text == ""


async def test_role_names_unsafe_as_header_text_are_left_out():
    ident = await identity({"sub": "u1", ROLES: {"ok": ORG, "a,b": ORG, "x\r\ny": ORG}})
    assert ident.groups == ("ok",)


def test_only_zitadel_role_claims_are_reshaped():
    assert zitadel.is_roles_claim(ROLES)
    assert zitadel.is_roles_claim("urn:zitadel:iam:org:project:1234:roles")
    assert not zitadel.is_roles_claim("groups")
    assert not zitadel.is_roles_claim("urn:zitadel:iam:user:metadata")


async def test_another_groups_claim_of_a_zitadel_action_stays_a_list():
    ident = await identity({"sub": "u1", "groups": ["a", "b"], ROLES: {"admin": ORG}}, claims={"groups": "groups"})
    assert ident.groups == ("a", "b")
