"""Policy expressions (CEL) over the user and the request: compiled once, fail closed, tested at load."""

from __future__ import annotations

import pytest

from proxy.authz import Asked, authorize
from proxy.config import AuthorizationConfig
from proxy.errors import ConfigError
from proxy.model import Identity
from proxy.policy import VARIABLES, check, compile_rule, facts
from tests.unit.conftest import make_config

RULE = '"admins" in groups || (email.endsWith("@example.com") && method == "GET")'
ALICE = Identity(sub="alice", email="alice@example.com", groups=("dev",))
ADMIN = Identity(sub="root", email="root@elsewhere.test", groups=("admins",))


def decide(identity: Identity, rules: list[str], method: str = "GET", path: str = "/", host: str = "app") -> bool:
    return authorize(identity, AuthorizationConfig(rules=rules), Asked(method, path, host)).allowed


@pytest.mark.parametrize("identity,method,allowed", [
    (ALICE, "GET", True), (ALICE, "POST", False), (ADMIN, "POST", True),
    (Identity(sub="eve"), "GET", False),                        # no email: "" does not end with the domain
])
def test_the_issue_example_decides_on_claims_and_method(identity, method, allowed):
    assert decide(identity, [RULE], method) is allowed


def test_one_true_rule_is_enough_and_each_denial_is_explained():
    assert decide(ALICE, ['path.startsWith("/admin")', 'host == "app"'], path="/x")
    decision = authorize(ALICE, AuthorizationConfig(rules=['path.startsWith("/admin")', 'method == "PUT"']),
                         Asked("GET", "/x", "app"))
    assert not decision.allowed
    assert "rules[0]: the expression is false" in decision.reason and "rules[1]" in decision.reason


def test_rules_combine_with_the_lists_every_non_empty_one_must_pass():
    rules = AuthorizationConfig(email_domains=["example.com"], rules=['method == "GET"'])
    assert authorize(ALICE, rules, Asked("GET", "/", "")).allowed
    assert not authorize(ALICE, rules, Asked("DELETE", "/", "")).allowed
    assert not authorize(ADMIN, rules, Asked("GET", "/", "")).allowed          # the domain list says no


def test_an_unverified_or_malformed_email_is_empty_for_expressions():
    tricky = Identity(sub="mallory", email="mallory@evil.test@example.com")
    assert not decide(tricky, ['email.endsWith("@example.com")'])


def test_without_the_request_rules_on_it_deny():
    assert not authorize(ALICE, AuthorizationConfig(rules=['method == "GET"']), None).allowed


@pytest.mark.parametrize("expression", ['groups.size()', '"x"', "1 / 0 == 1", 'groups[5] == "a"'])
def test_anything_but_true_denies_errors_included(expression):
    allowed, reason = compile_rule(expression).allows(facts(ALICE, ALICE.email, "GET", "/", ""))
    assert not allowed and reason


@pytest.mark.parametrize("expression,problem", [
    ("1 +", "not a valid CEL expression"),
    ('"admins" in group', "unknown name 'group'"),                # misspelt: would deny everyone at run time
    ("token == 'x'", "unknown name 'token'"),                     # no token is ever offered
])
def test_a_bad_expression_is_a_problem_named_at_load(expression, problem):
    assert problem in (check(expression) or "")
    with pytest.raises(ConfigError) as caught:
        make_config(authorization={"rules": [expression]})
    assert "authorization.rules[0]" in str(caught.value) and problem in str(caught.value)


def test_the_variables_are_all_offered():
    activation = facts(ALICE, ALICE.email, "GET", "/", "h").activation()
    assert set(activation) == VARIABLES


def test_tests_in_the_configuration_run_at_load_and_a_wrong_one_stops_it():
    good = {"rules": [RULE], "tests": [
        {"claims": {"sub": "alice", "email": "alice@example.com"}, "method": "GET", "allow": True},
        {"claims": {"sub": "alice", "email": "alice@example.com"}, "method": "POST", "allow": False},
        {"claims": {"sub": "root", "groups": ["admins"]}, "method": "DELETE", "path": "/x", "allow": True}]}
    assert make_config(authorization=good).authorization.tests[2].allow
    wrong = {"rules": [RULE], "tests": [{"claims": {"sub": "alice", "email": "alice@example.com"},
                                         "method": "POST", "allow": True}]}
    with pytest.raises(ConfigError) as caught:
        make_config(authorization=wrong)
    assert "authorization.tests[0]" in str(caught.value) and "expected allow, the section denies" in str(caught.value)


def test_tests_check_the_lists_too_and_an_upstreams_own_section():
    lists = {"allowed_groups": ["ops"], "tests": [{"claims": {"sub": "a", "groups": ["dev"]}, "allow": True}]}
    with pytest.raises(ConfigError) as caught:
        make_config(upstreams=[{"path": "/", "url": "http://127.0.0.1:9", "authorization": lists}])
    assert "upstreams[0].authorization.tests[0]" in str(caught.value)


def test_a_rule_is_compiled_once():
    assert compile_rule(RULE) is compile_rule(RULE)
