"""Pushed Authorization Requests (RFC 9126) at the real oidc-provider (issue 20).

With PAR the authorization request's parameters go to the provider over the back channel, authenticated as
the client; the browser is sent to the authorization endpoint with ``client_id`` and ``request_uri`` only.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.browserless import login_via_http
from tests.support.fixtures import CLIENT_ID

pytestmark = pytest.mark.integration


async def _start_location(stack, session) -> str:
    async with session.get(stack.url + "/oauth2/start?rd=/here", allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


@pytest.mark.parametrize("how", ["configured", "required-by-provider"])
async def test_the_browser_carries_only_the_request_uri_and_the_sign_in_completes(stack_factory, browser_session,
                                                                                  how):
    if how == "configured":
        stack = await stack_factory(provider={"pushed_authorization_requests": True})
    else:
        stack = await stack_factory(idp_options={"require_pushed_authorization_requests": True})
        assert (await stack.idp.discovery())["require_pushed_authorization_requests"] is True
    location = await _start_location(stack, browser_session)
    query = parse_qs(urlsplit(location).query)
    assert set(query) == {"client_id", "request_uri"} and query["client_id"] == [CLIENT_ID]
    assert query["request_uri"][0].startswith("urn:ietf:params:oauth:request_uri:")
    result = await login_via_http(browser_session, stack.url + "/page")
    assert result.status == 200 and json.loads(result.body_text)["path"] == "/page"


async def test_par_with_private_key_jwt(stack_factory, browser_session, tmp_path):
    """The push authenticates like the token endpoint: here with a client assertion."""
    from joserfc.jwk import RSAKey
    key = RSAKey.generate_key(2048, private=True)
    (tmp_path / "k.pem").write_bytes(key.as_pem(private=True))
    stack = await stack_factory(
        client={"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [key.as_dict(private=False)]}},
        provider={"pushed_authorization_requests": True, "client_secret": None,
                  "token_endpoint_auth_method": "private_key_jwt", "private_key_file": str(tmp_path / "k.pem")})
    result = await login_via_http(browser_session, stack.url + "/page")
    assert result.status == 200, result.body_text[:300]


async def test_a_request_uri_is_good_for_one_sign_in(stack_factory, browser_session):
    stack = await stack_factory(provider={"pushed_authorization_requests": True})
    location = await _start_location(stack, browser_session)
    first = await login_via_http(browser_session, location)
    assert first.status == 200, first.body_text[:300]
    again = await login_via_http(browser_session, location)
    # The provider refuses the spent request_uri (with no state to match: it no longer knows the request).
    assert "error=invalid_request_uri" in again.url and again.status == 403


async def test_a_client_the_provider_refuses_is_stopped_at_the_push(stack_factory, browser_session):
    stack = await stack_factory(provider={"pushed_authorization_requests": True, "client_secret": "wrong-secret"})
    async with browser_session.get(stack.url + "/oauth2/start", allow_redirects=False) as resp:
        assert resp.status == 502
        assert "Location" not in resp.headers


async def test_without_being_asked_the_proxy_does_not_push(stack, browser_session):
    """The provider advertises PAR, but neither the configuration nor the provider asks for it."""
    assert "pushed_authorization_request_endpoint" in await stack.idp.discovery()
    query = parse_qs(urlsplit(await _start_location(stack, browser_session)).query)
    assert "request_uri" not in query and query["redirect_uri"] == [stack.url + "/oauth2/callback"]
