"""Tests for proxy.model: the identity found in claims, the session value, and its stored form."""

from __future__ import annotations

import json

import pytest

from proxy.config import ClaimsConfig
from proxy.errors import CookieError, TokenValidationError
from proxy.model import Identity, Session, claim_at
from tests.unit.conftest import NOW, make_session

# -- claim_at -----------------------------------------------------------------------------------------


def test_claim_at_follows_dotted_paths() -> None:
    claims = {"realm_access": {"roles": ["admin"]}, "sub": "u"}
    assert claim_at(claims, "realm_access.roles") == ["admin"]
    assert claim_at(claims, "sub") == "u"


def test_claim_at_prefers_a_claim_named_with_dots() -> None:
    """Providers such as Auth0 name claims with URLs: the literal name wins over the nested path."""
    claims = {"https://x.test/roles": ["lit"], "https://x": {"test/roles": ["nested"]}, "a.b": 1, "a": {"b": 2}}
    assert claim_at(claims, "https://x.test/roles") == ["lit"]
    assert claim_at(claims, "a.b") == 1


@pytest.mark.parametrize("path", ["missing", "realm_access.missing", "sub.deeper", "realm_access.roles.0"])
def test_claim_at_a_path_that_leads_nowhere_is_none(path: str) -> None:
    assert claim_at({"sub": "u", "realm_access": {"roles": ["a"]}}, path) is None


# -- Identity.from_claims -----------------------------------------------------------------------------


def test_identity_from_standard_claims() -> None:
    ident = Identity.from_claims({"sub": "u1", "email": "u@x.test", "email_verified": True, "name": "U One",
                                  "preferred_username": "uone", "groups": ["a", "b"]})
    assert ident == Identity(sub="u1", email="u@x.test", preferred_username="uone", name="U One", groups=("a", "b"))


def test_an_unverified_email_is_no_email() -> None:
    assert Identity.from_claims({"sub": "u", "email": "u@x.test", "email_verified": False}).email is None
    # Absent email_verified is not "false": many providers only send verified addresses.
    assert Identity.from_claims({"sub": "u", "email": "u@x.test"}).email == "u@x.test"


def test_configured_claim_paths_are_used() -> None:
    paths = ClaimsConfig(email="mail", groups="realm_access.roles", name="display", preferred_username="login")
    ident = Identity.from_claims({"sub": "u", "mail": "m@x.test", "email": "ignored@x.test", "display": "D",
                                  "login": "l", "realm_access": {"roles": ["r1"]}, "groups": ["ignored"]}, paths)
    assert (ident.email, ident.name, ident.preferred_username, ident.groups) == ("m@x.test", "D", "l", ("r1",))


def test_a_numeric_user_id_becomes_text() -> None:
    """GitHub's user id is a number; the user path is configurable for plain OAuth 2.0."""
    assert Identity.from_claims({"id": 583231}, user_path="id").sub == "583231"


@pytest.mark.parametrize("claims", [{}, {"sub": ""}, {"sub": None}, {"sub": True}, {"sub": ["u"]}, {"sub": 1.5}])
def test_no_usable_user_id_is_a_token_validation_error(claims: dict[str, object]) -> None:
    with pytest.raises(TokenValidationError) as raised:
        Identity.from_claims(claims)
    assert raised.value.code == "sub"


@pytest.mark.parametrize("sub", ["u\r\nX-Forwarded-User: admin", "u\x00", "u\x7f", "u\tv"])
def test_a_user_id_with_control_characters_is_refused(sub: str) -> None:
    """The identity becomes upstream headers: CR/LF would add one of the attacker's choosing."""
    with pytest.raises(TokenValidationError):
        Identity.from_claims({"sub": sub})


def test_unsafe_or_oversized_optional_values_are_dropped_not_fatal() -> None:
    ident = Identity.from_claims({"sub": "u", "email": "a@x.test\r\nX: y", "name": "n" * 1025,
                                  "preferred_username": 42, "groups": ["ok", "bad\n", "", 7, "a,b", "x" * 1025]})
    assert ident.email is None and ident.name is None and ident.preferred_username is None
    assert ident.groups == ("ok",)                 # a comma would split X-Forwarded-Groups into two groups


def test_a_single_group_string_is_one_group_and_other_shapes_none() -> None:
    assert Identity.from_claims({"sub": "u", "groups": "admins"}).groups == ("admins",)
    assert Identity.from_claims({"sub": "u", "groups": {"admins": True}}).groups == ()


# -- Session --------------------------------------------------------------------------------------------


def test_repr_shows_whether_tokens_exist_never_the_tokens() -> None:
    full, bare = make_session(), make_session(refresh_token=None, id_token=None)
    assert "refresh_token=yes" in repr(full) and "id_token=yes" in repr(full)
    assert "refresh_token=no" in repr(bare) and "id_token=no" in repr(bare)
    assert not [token for token in ("AT-secret", "RT-secret", "ID-token") if token in repr(full) or token in str(full)]


def test_access_expired_at_the_expiry_itself() -> None:
    session = make_session(expires_at=NOW + 10)
    assert not session.access_expired(NOW + 9.999)
    assert session.access_expired(NOW + 10)
    assert not make_session(expires_at=None).access_expired(NOW + 10**9)      # no expiry given: never


def test_with_tokens_returns_a_new_session() -> None:
    session = make_session()
    refreshed = session.with_tokens(access_token="AT-2", expires_at=NOW + 600)
    assert session.access_token == "AT-secret" and refreshed.access_token == "AT-2"
    assert refreshed.identity == session.identity and refreshed.expires_at == NOW + 600
    with pytest.raises(AttributeError):
        session.access_token = "x"      # type: ignore[misc]   # frozen


def test_round_trip_through_bytes() -> None:
    session = make_session(issued_at=NOW - 5, sid="sid-1", id="abc")
    assert Session.from_bytes(session.to_bytes()) == session
    assert Session.from_bytes(make_session(expires_at=None, refresh_token=None).to_bytes()).expires_at is None


def test_the_sign_ins_acr_and_auth_time_round_trip_and_are_left_out_when_unknown() -> None:
    stepped = make_session(acr="urn:example:mfa", auth_time=NOW - 30)
    assert Session.from_bytes(stepped.to_bytes()) == stepped
    plain = json.loads(make_session().to_bytes())
    assert "acr" not in plain and "auth_time" not in plain          # the payload of such sessions stays as it was


def test_a_session_stored_before_acr_was_kept_is_read_without_one() -> None:
    old = json.loads(make_session(acr="urn:example:mfa", auth_time=NOW).to_bytes())
    del old["acr"], old["auth_time"]
    session = Session.from_bytes(json.dumps(old).encode())
    assert session.acr is None and session.auth_time is None


def _stored(**changes: object) -> bytes:
    data = json.loads(make_session().to_bytes())
    for key, value in changes.items():
        if key.startswith("identity."):
            data["identity"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b"{}", b'{"identity": {"sub": "u"}}', b"\xff\xfe",
    _stored(unknown_field=1), _stored(identity="alice"), _stored(**{"identity.extra": 1}),
])
def test_a_payload_of_another_shape_is_a_cookie_error(raw: bytes) -> None:
    with pytest.raises(CookieError):
        Session.from_bytes(raw)


@pytest.mark.parametrize("changes", [
    {"created_at": "yesterday"}, {"created_at": None}, {"created_at": True}, {"expires_at": "soon"},
    {"issued_at": [1]}, {"access_token": None}, {"access_token": 5}, {"refresh_token": 5}, {"id": None},
    {"sid": {}}, {"identity.sub": ""}, {"identity.sub": 42}, {"identity.email": 1}, {"identity.groups": [1]},
    {"acr": 2}, {"acr": ["urn:example:mfa"]}, {"auth_time": "1700000000"}, {"auth_time": True},
])
def test_a_payload_with_a_field_of_the_wrong_type_is_a_cookie_error(changes: dict[str, object]) -> None:
    with pytest.raises(CookieError):
        Session.from_bytes(_stored(**changes))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_times_are_a_cookie_error(value: str) -> None:
    raw = _stored().replace(f'"created_at": {NOW - 10}'.encode(), f'"created_at": {value}'.encode())
    assert value.encode() in raw
    with pytest.raises(CookieError):
        Session.from_bytes(raw)
