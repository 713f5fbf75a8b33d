"""``POST /oauth2/backchannel_logout`` through the real app: what it refuses, OAuth-style, and what it ends.

The token's signature and claims are ``tokens.py``'s to check (and the integration suite's, against the
real provider); here the provider's verdict is given, to pin what the endpoint does with it.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.backchannel import FORM, MAX_BODY
from proxy.context import PROVIDER
from tests.support.unit_app import cookie_for, metadata_loaded, unit_app
from tests.unit.conftest import make_session

PATH = "/oauth2/backchannel_logout"


@pytest.fixture
async def app_client(aiohttp_client):
    app = unit_app()
    client = await aiohttp_client(app)
    await metadata_loaded(app)
    return app, client


async def _refusal(response) -> tuple[int, dict[str, Any]]:
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return response.status, await response.json()


async def test_a_request_that_is_not_a_form_is_refused_with_an_oauth_error(app_client):
    _, c = app_client
    response = await c.post(PATH, json={"logout_token": "x"})
    assert await _refusal(response) == (400, {
        "error": "invalid_request",
        "error_description": f"the request is not {FORM} (Back-Channel Logout 1.0 §2.5)"})


async def test_a_body_too_large_is_a_413_before_it_is_read(app_client):
    _, c = app_client
    response = await c.post(PATH, data="logout_token=" + "a" * MAX_BODY, headers={"Content-Type": FORM})
    assert await _refusal(response) == (413, {
        "error": "invalid_request", "error_description": f"the request body is larger than {MAX_BODY} bytes"})


async def test_a_form_without_a_logout_token_is_refused(app_client):
    _, c = app_client
    response = await c.post(PATH, data={"other": "x"})
    assert await _refusal(response) == (400, {"error": "invalid_request",
                                              "error_description": "the request has no logout_token"})


async def test_a_token_that_fails_a_check_is_refused_naming_the_check_only(app_client):
    _, c = app_client
    status, body = await _refusal(await c.post(PATH, data={"logout_token": "not-a-jwt"}))
    assert status == 400 and body["error"] == "invalid_request"
    assert body["error_description"].startswith("the logout token failed a check (")
    assert "not-a-jwt" not in body["error_description"]


async def test_a_verified_token_ends_its_sessions_once_and_is_not_accepted_twice(app_client, monkeypatch):
    app, c = app_client
    cookie = cookie_for(app, make_session(sid="sid-1"))
    assert (await c.get("/oauth2/userinfo", headers=cookie)).status == 200

    async def verified(token: str) -> dict[str, Any]:
        return {"jti": "jti-1", "sid": "sid-1", "sub": "alice"}

    monkeypatch.setattr(app[PROVIDER], "verify_logout_token", verified)
    first = await c.post(PATH, data={"logout_token": "t"})
    assert first.status == 200 and first.headers["Cache-Control"] == "no-store"
    assert (await c.get("/oauth2/userinfo", headers=cookie)).status == 401      # the session of that sid ended
    again = await c.post(PATH, data={"logout_token": "t"})
    assert await _refusal(again) == (400, {"error": "invalid_request",
                                           "error_description": "the logout token was already used"})
