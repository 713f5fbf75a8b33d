"""Step-up rules: what the rules ask, whether a session meets it, what a new sign-in asks, RFC 9470's challenge,
the sealed step-up link, and which claims a session takes its level from."""

from __future__ import annotations

import json

import pytest

from proxy.config import AuthorizationConfig
from proxy.crypto import Sealer
from proxy.errors import LoginError
from proxy.model import Identity, Session
from proxy.stepup import (STEP_UP_PURPOSE, Requirement, authentication, challenge, opened_step_up, requirement,
                          shortfall, sign_in_parameters, step_up_query)
from tests.unit.conftest import make_config

MFA, PWD, HWK = "urn:example:mfa", "urn:example:pwd", "urn:example:hwk"
NOW = 1_800_000_000.0


def rules(**keys: object) -> AuthorizationConfig:
    return AuthorizationConfig.model_validate(keys)


def signed_in(acr: str | None = None, auth_time: float | None = None) -> Session:
    return Session(identity=Identity(sub="alice"), access_token="AT", created_at=NOW - 10, acr=acr,
                   auth_time=auth_time)


def test_rules_without_acr_or_age_ask_nothing():
    assert requirement([]) is None
    assert requirement([rules(allowed_groups=["staff"])]) is None


def test_every_rule_set_must_be_met_the_acr_lists_intersect_and_the_shortest_age_wins():
    assert requirement([rules(acr=[MFA, HWK])]) == Requirement((MFA, HWK), None)
    assert requirement([rules(acr=[MFA, HWK], max_auth_age=600), rules(acr=[HWK, PWD], max_auth_age="5m")]) \
        == Requirement((HWK,), 300)
    assert requirement([rules(max_auth_age=600), rules(acr=[MFA])]) == Requirement((MFA,), 600)
    assert requirement([rules(acr=[MFA]), rules(acr=[PWD])]) == Requirement((), None)       # nobody can meet it


@pytest.mark.parametrize(("session", "needed", "short"), [
    (signed_in(MFA), Requirement((MFA, HWK)), None),
    (signed_in(HWK), Requirement((MFA, HWK)), None),
    (signed_in(PWD), Requirement((MFA,)), "acr 'urn:example:pwd'"),
    (signed_in(None), Requirement((MFA,)), "no acr"),
    (signed_in(MFA.upper()), Requirement((MFA,)), "acr"),                    # compared exactly
    (signed_in(MFA), Requirement((), None), "acr"),
    (signed_in(None, NOW - 300), Requirement(None, 300), None),
    (signed_in(None, NOW - 359), Requirement(None, 300), None),              # within the 60 s leeway
    (signed_in(None, NOW - 361), Requirement(None, 300), "signed in 361s ago"),
    (signed_in(None, None), Requirement(None, 300), "no auth_time"),
    (signed_in(MFA, NOW - 400), Requirement((MFA,), 300), "signed in 400s ago"),
    (signed_in(PWD, NOW), Requirement((MFA,), 300), "acr"),
])
def test_shortfall(session, needed, short):
    found = shortfall(session, needed, NOW, leeway=60)
    assert (found is None) if short is None else (found is not None and short in found)


def test_a_new_sign_in_asks_for_the_acr_values_the_age_and_a_login():
    assert sign_in_parameters(Requirement((MFA, HWK), 300)) == {"acr_values": f"{MFA} {HWK}", "max_age": "300",
                                                                 "prompt": "login"}
    assert sign_in_parameters(Requirement((MFA,), None)) == {"acr_values": MFA, "prompt": "login"}
    assert sign_in_parameters(Requirement(None, 60)) == {"max_age": "60", "prompt": "login"}
    # extra_authorize_params' own prompt is kept beside login; "none" contradicts it and is dropped
    assert sign_in_parameters(Requirement((MFA,)), "consent")["prompt"] == "login consent"
    assert sign_in_parameters(Requirement((MFA,)), "none")["prompt"] == "login"
    assert sign_in_parameters(Requirement((MFA,)), "login select_account")["prompt"] == "login select_account"


def test_the_challenge_is_rfc_9470s():
    assert challenge({"acr_values": f"{MFA} {HWK}", "max_age": "300", "prompt": "login"}) == (
        'Bearer realm="authproxy", error="insufficient_user_authentication", error_description="A stronger or '
        f'more recent sign-in is required", acr_values="{MFA} {HWK}", max_age=300')
    assert challenge({"max_age": "60"}).endswith('is required", max_age=60')
    assert "acr_values" not in challenge({"max_age": "60"})


def test_a_session_takes_its_level_from_well_typed_claims_only():
    assert authentication({"acr": MFA, "auth_time": 1700000000}) == (MFA, 1700000000.0)
    assert authentication({}) == (None, None)
    for bad in ({"acr": ["urn:x"], "auth_time": "1700000000"}, {"acr": "", "auth_time": True},
                {"acr": 2, "auth_time": float("nan")}, {"acr": "x" * 2000, "auth_time": None}):
        assert authentication(bad) == (None, None)


def test_the_step_up_link_is_sealed_and_opens_only_as_one():
    sealer = Sealer(make_config().cookie.keys)
    asked = {"acr_values": MFA, "max_age": "300", "prompt": "login"}
    assert opened_step_up(sealer, step_up_query(sealer, asked)) == asked
    forged = [
        "", "1.AAAA", "x" * 5000,
        sealer.seal(json.dumps(asked).encode(), b"another purpose"),                  # sealed for something else
        sealer.seal(json.dumps({"acr_values": MFA, "login_hint": "x"}).encode(), STEP_UP_PURPOSE),
        sealer.seal(json.dumps(["acr_values"]).encode(), STEP_UP_PURPOSE),
        sealer.seal(json.dumps({"max_age": 300}).encode(), STEP_UP_PURPOSE),
        Sealer([b"o" * 32]).seal(json.dumps(asked).encode(), STEP_UP_PURPOSE),      # another key
    ]
    for value in forged:
        with pytest.raises(LoginError):
            opened_step_up(sealer, value)
