"""Per-request sign-in parameters (proxy/authorize_params.py): the allow-list, value checks, and the ID token's
answer to max_age and acr_values (OIDC Core §3.1.3.7)."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from proxy.authorize_params import MAX_PARAMETER_CHARS, PASSABLE, check_asked, requested
from proxy.errors import LoginError, TokenValidationError

NOW = 1_700_000_000.0


def test_only_allowed_parameters_pass():
    query = MultiDict(rd="/x", login_hint="alice@example.com", prompt="login", max_age="60")
    assert requested(query, ["login_hint"]) == {"login_hint": "alice@example.com"}
    assert requested(query, []) == {}
    assert requested(query, list(PASSABLE)) == {"login_hint": "alice@example.com", "prompt": "login",
                                                 "max_age": "60"}


@pytest.mark.parametrize(("name", "value"), [
    ("login_hint", "alice\r\nSet-Cookie: x=1"), ("login_hint", "a\x00b"),
    ("login_hint", "x" * (MAX_PARAMETER_CHARS + 1)),
    ("prompt", "always"), ("prompt", "none login"), ("max_age", "-1"), ("max_age", "1e9"), ("max_age", "9999999999"),
    ("acr_values", "gold  silver"), ("acr_values", "gold\tsilver"), ("ui_locales", "en_GB"),
    ("domain_hint", "example.com/evil"),
])
def test_a_bad_value_refuses_the_start(name, value):
    with pytest.raises(LoginError) as caught:
        requested(MultiDict({name: value}), list(PASSABLE))
    assert name in str(caught.value)


@pytest.mark.parametrize(("name", "value"), [
    ("prompt", "login consent"), ("prompt", "none"), ("acr_values", "urn:mace:incommon:iap:silver phr"),
    ("ui_locales", "fr-CA fr en"), ("domain_hint", "contoso.com"), ("login_hint", "Zoë <zoe@example.com>"),
    ("max_age", "0"),
])
def test_good_values_pass(name, value):
    assert requested(MultiDict({name: value}), list(PASSABLE)) == {name: value}


def test_max_age_needs_a_recent_auth_time():
    check_asked({"auth_time": NOW - 100}, {"max_age": "60"}, NOW, 60)           # within max_age + leeway
    for claims, fragment in (({}, "no auth_time"), ({"auth_time": True}, "no auth_time"),
                             ({"auth_time": NOW - 200}, "longer than the max_age")):
        with pytest.raises(TokenValidationError) as caught:
            check_asked(claims, {"max_age": "60"}, NOW, 60)
        assert caught.value.code == "auth_time" and fragment in str(caught.value)


def test_acr_must_be_one_of_those_asked():
    check_asked({"acr": "silver"}, {"acr_values": "gold silver"}, NOW, 0)
    for claims in ({}, {"acr": "bronze"}, {"acr": ["gold"]}, {"acr": "gold silver"}):
        with pytest.raises(TokenValidationError) as caught:
            check_asked(claims, {"acr_values": "gold silver"}, NOW, 0)
        assert caught.value.code == "acr"


def test_nothing_asked_nothing_checked():
    check_asked({}, {}, NOW, 0)
