"""Signed identity assertions, checked as an app would: with the published JWKS only."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from proxy.assertion import CACHE_MAX, TYP, AssertionSigner
from proxy.session import Identity, Session

ISSUER = "https://auth.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def session(sub: str = "alice", **identity) -> Session:
    return Session(identity=Identity(sub=sub, **identity), access_token="AT-secret", created_at=1_699_999_000,
                   issued_at=1_699_999_900, expires_at=1_700_000_500, refresh_token="RT-secret", id="sid-1")


def verify(token: str, jwks: dict, audience: str, now: float) -> dict:
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    registry = jwt.JWTClaimsRegistry(now=int(now), iss={"essential": True, "value": ISSUER},
                                     aud={"essential": True, "value": audience})
    registry.validate(decoded.claims)
    return {"header": decoded.header, **decoded.claims}


def test_an_app_verifies_who_the_user_is_with_the_published_keys():
    clock = Clock()
    signer = AssertionSigner([b"s" * 32], ISSUER, clock=clock)
    token = signer.assertion(session(email="a@example.com", groups=("admins", "dev"), name="Alice"),
                             "https://wiki.internal", 60)
    claims = verify(token, signer.jwks(), "https://wiki.internal", clock())
    assert claims["sub"] == "alice" and claims["email"] == "a@example.com" and claims["name"] == "Alice"
    assert claims["groups"] == ["admins", "dev"]
    assert claims["exp"] - claims["iat"] == 60
    assert claims["header"]["typ"] == TYP and claims["header"]["alg"] == "ES256"
    assert claims["header"]["kid"] == signer.jwks()["keys"][0]["kid"]
    assert not {"AT-secret", "RT-secret"} & {str(v) for v in claims.values()}    # never the user's tokens


def test_the_jwks_holds_public_keys_only():
    jwks = AssertionSigner([b"s" * 32, b"t" * 32], ISSUER).jwks()
    assert len(jwks["keys"]) == 2
    for key in jwks["keys"]:
        assert key["kty"] == "EC" and key["crv"] == "P-256" and "d" not in key
        assert key["use"] == "sig" and key["alg"] == "ES256"


def test_another_upstreams_assertion_is_refused_by_its_audience():
    clock = Clock()
    signer = AssertionSigner([b"s" * 32], ISSUER, clock=clock)
    token = signer.assertion(session(), "https://wiki.internal", 60)
    with pytest.raises(Exception, match="aud"):
        verify(token, signer.jwks(), "https://billing.internal", clock())


def test_an_expired_assertion_is_refused():
    clock = Clock()
    signer = AssertionSigner([b"s" * 32], ISSUER, clock=clock)
    token = signer.assertion(session(), "app", 60)
    with pytest.raises(Exception, match="exp"):
        verify(token, signer.jwks(), "app", clock() + 61)


def test_the_same_secret_gives_the_same_key_in_every_worker_and_another_secret_another():
    a, b, c = (AssertionSigner([secret], ISSUER) for secret in (b"s" * 32, b"s" * 32, b"t" * 32))
    assert a.jwks() == b.jwks()
    assert a.jwks() != c.jwks()


def test_rotation_publishes_the_old_key_until_it_is_dropped():
    clock = Clock()
    old = AssertionSigner([b"old" * 11], ISSUER, clock=clock)
    token = old.assertion(session(), "app", 60)
    rotated = AssertionSigner([b"new" * 11, b"old" * 11], ISSUER, clock=clock)
    assert verify(token, rotated.jwks(), "app", clock())["sub"] == "alice"      # still valid during rotation
    assert rotated.jwks()["keys"][0]["kid"] != old.jwks()["keys"][0]["kid"]       # the new key signs
    with pytest.raises(JoseError):                                               # its kid is gone
        verify(token, AssertionSigner([b"new" * 11], ISSUER).jwks(), "app", clock())


def test_an_assertion_is_reused_until_half_its_life_then_renewed():
    clock = Clock()
    signer = AssertionSigner([b"s" * 32], ISSUER, clock=clock)
    first = signer.assertion(session(), "app", 60)
    clock.now += 29
    assert signer.assertion(session(), "app", 60) == first
    assert signer.assertion(session(), "other-app", 60) != first
    assert signer.assertion(session("bob"), "app", 60) != first
    clock.now += 2
    renewed = signer.assertion(session(), "app", 60)
    assert renewed != first and verify(renewed, signer.jwks(), "app", clock())["exp"] == int(clock() + 60)


def test_the_reuse_cache_is_bounded():
    signer = AssertionSigner([b"s" * 32], ISSUER)
    for i in range(CACHE_MAX + 5):
        signer.assertion(session(f"user{i}"), "app", 60)
    assert len(signer._cache) == CACHE_MAX


def test_a_new_session_object_per_request_reuses_the_assertion_and_a_changed_identity_does_not():
    """A Bearer API client gets a new Session (new issued_at) per request: no signature per request."""
    clock = Clock()
    signer = AssertionSigner([b"s" * 32], ISSUER, clock=clock)
    first = signer.assertion(session(), "app", 60)
    again = Session(identity=Identity(sub="alice"), access_token="other", created_at=clock(), issued_at=clock(),
                    id="bearer")
    assert signer.assertion(again, "app", 60) == first
    regrouped = Session(identity=Identity(sub="alice", groups=("admins",)), access_token="AT", created_at=0, id="b")
    changed = signer.assertion(regrouped, "app", 60)
    assert changed != first and verify(changed, signer.jwks(), "app", clock())["groups"] == ["admins"]
