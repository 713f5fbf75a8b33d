"""Login: the login cookie's size, the callback's response checks, the sign-in page, and the navigation test.

The redirect guard (``safe_redirect``) is tested in test_redirects.py."""

import json
from dataclasses import asdict

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import MultiDict

from proxy.crypto import Sealer, pkce_pair, random_token
from proxy.errors import LoginError
from proxy.login import (
    LoginState,
    _plain_text,
    _refuse_repeated_parameters,
    html_redirect,
    is_navigation,
)
from proxy.redirects import MAX_REDIRECT_LENGTH, safe_redirect
from tests.unit.conftest import make_config

ORIGIN = "https://app.example.com"

def test_login_cookie_for_the_longest_target_fits_in_a_browser():
    """The target rides in the login cookie: a browser drops a cookie over 4096 bytes (name and value,
    RFC 6265 §6.1), and the sign-in could then never complete. The worst case must fit with room to spare."""
    config = make_config()
    target = safe_redirect("/" + "a" * (MAX_REDIRECT_LENGTH - len(ORIGIN) - 1), config)
    assert len(target) == MAX_REDIRECT_LENGTH
    state, (verifier, _) = random_token(), pkce_pair()
    login = LoginState(state=state, verifier=verifier, nonce=random_token(), rd=target, created=1.7e9)
    name = config.cookie.name + "_login_" + state
    sealed = Sealer(config.cookie.keys).seal(json.dumps(asdict(login)).encode(), name.encode())
    assert len(name) + len(sealed) <= 4096 - 512


@pytest.mark.parametrize("value,expected", [
    ("access_denied", "access_denied"),
    ("The user said no <b>thanks</b> & left.", "The user said no <b>thanks</b> & left."),
    ("x" * 300, "x" * 200),
    ("", ""),
    (None, None),
    ("line\r\nbreak", None),
    ("tab\there", None),
    ("nul\x00", None),
    ('a "quote"', None),
    ("back\\slash", None),
    ("right-to-left \u202e", None),
    ("look-\u0430like", None),
    ("caf\u00e9", None),
])
def test_error_text_is_kept_only_within_rfc6749_characters(value, expected):
    assert _plain_text(value, 200) == expected


@pytest.mark.parametrize("pairs", [
    [("state", "s"), ("code", "c"), ("iss", "https://idp"), ("iss", "https://evil")],
    [("state", "s"), ("state", "t"), ("code", "c")],
    [("state", "s"), ("code", "c"), ("code", "d")],
    [("state", "s"), ("error", "access_denied"), ("error", "server_error")],
    [("state", "s"), ("error", "e"), ("error_description", "a"), ("error_description", "b")],
])
def test_repeated_response_parameters_are_refused(pairs):
    with pytest.raises(LoginError, match="more than once"):
        _refuse_repeated_parameters(MultiDict(pairs))


def test_single_response_parameters_and_unknown_repeats_pass():
    _refuse_repeated_parameters(MultiDict([("state", "s"), ("code", "c"), ("iss", "https://idp"),
                                           ("session_state", "x"), ("session_state", "y")]))


def test_sign_in_page_sends_no_referer_and_escapes_its_target():
    """The page at the callback URL (samesite strict) must not hand ``?code=…&state=…`` on as Referer."""
    response = html_redirect("https://app.example.com/x?a=1&b='2'")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "url=https://app.example.com/x?a=1&amp;b=&#x27;2&#x27;" in response.text


def _req(headers):
    return make_mocked_request("GET", "/", headers=headers)


@pytest.mark.parametrize("headers,expected", [
    ({"Accept": "text/html,application/xhtml+xml"}, True),
    # From a plain-http origin a fetch() sends no Sec-Fetch-* and Accept */* (tests/e2e/test_fetch_without_sec_fetch.py)
    ({"Accept": "*/*"}, False),
    ({"Accept": "*/*", "Sec-Fetch-Mode": "navigate"}, True),
    ({"Accept": "text/html;q=0.9,*/*;q=0.8"}, True),
    ({"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}, True),
    ({"Accept": "text/html", "Sec-Fetch-Mode": "cors"}, False),
    ({"Accept": "*/*", "Sec-Fetch-Dest": "image"}, False),
    ({"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}, False),
    ({"Accept": "application/json"}, False),
    ({}, False),
])
def test_is_navigation(headers, expected):
    assert is_navigation(_req(headers)) is expected


def test_a_step_up_login_cookie_for_the_longest_target_and_acr_list_fits_in_a_browser():
    """A step-up's login cookie also keeps what was asked (at most 256 characters of acr values: the
    config's limit) and the id of the session it replaces."""
    config = make_config()
    target = safe_redirect("/" + "a" * (MAX_REDIRECT_LENGTH - len(ORIGIN) - 1), config)
    state, (verifier, _) = random_token(), pkce_pair()
    login = LoginState(state=state, verifier=verifier, nonce=random_token(), rd=target, created=1.7e9,
                       asked={"acr_values": "a" * 256, "max_age": "999999999"}, step_up=True,
                       replaces=random_token(16))
    name = config.cookie.name + "_login_" + state
    sealed = Sealer(config.cookie.keys).seal(json.dumps(asdict(login)).encode(), name.encode())
    assert len(name) + len(sealed) <= 4096 - 256


async def test_how_the_user_signed_in_comes_from_the_id_token_never_from_userinfo():
    """OIDC Core §5.3.2: userinfo is no signed statement about the sign-in. An ``acr`` or ``auth_time`` the ID
    token lacks is not filled from it, though its other claims are merged."""
    from proxy.login import _verified_claims
    from proxy.provider import TokenSet
    from proxy.stepup import authentication

    class Provider:
        is_oidc = True

        async def verify_id_token(self, token, *, nonce):
            return {"sub": "alice", "email": "a@x.test"}

        async def userinfo(self, access_token):
            return {"sub": "alice", "acr": "urn:example:mfa", "auth_time": 10**10, "groups": ["g"]}

        def groups_overflowed(self, claims):
            return False

    config = make_config(provider={"use_userinfo": True})
    tokens = TokenSet(access_token="AT", expires_at=None, refresh_token=None, id_token="ID")
    claims, id_claims = await _verified_claims(Provider(), config, tokens, "nonce")   # type: ignore[arg-type]
    assert claims["groups"] == ["g"] and claims["acr"] == "urn:example:mfa"
    assert authentication(id_claims) == (None, None)
