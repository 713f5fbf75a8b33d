"""Per-request sign-in parameters through /oauth2/start, at the real oidc-provider (issue 20)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.support.browserless import login_via_http
from tests.support.timing import OffsetClock

pytestmark = pytest.mark.integration

ALLOWED = {"provider": {"authorize_parameters": ["login_hint", "max_age", "acr_values"]}}


async def _location(stack, session, query: str) -> tuple[int, dict[str, list[str]]]:
    async with session.get(stack.url + "/oauth2/start?" + query, allow_redirects=False) as resp:
        return resp.status, parse_qs(urlsplit(resp.headers.get("Location", "")).query)


async def test_allowed_parameters_pass_and_others_are_left_out(stack_factory, browser_session):
    stack = await stack_factory(**ALLOWED)
    status, query = await _location(stack, browser_session, "rd=/x&login_hint=alice%40example.com&prompt=none"
                                                            "&ui_locales=fr")
    assert status == 302 and query["login_hint"] == ["alice@example.com"]
    assert query["prompt"] == ["consent"]                     # extra_authorize_params' own, not the link's
    assert "ui_locales" not in query
    status, _ = await _location(stack, browser_session, "login_hint=" + quote("alice\r\nX: y"))
    assert status == 400


async def test_max_age_is_passed_and_auth_time_checked(stack_factory, browser_session):
    stack = await stack_factory(**ALLOWED)
    result = await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/in&max_age=300")
    assert result.status == 200 and json.loads(result.body_text)["path"] == "/in"


async def test_a_sign_in_older_than_max_age_is_refused(stack_factory, browser_session, caplog):
    clock = OffsetClock()
    stack = await stack_factory(clock=clock, **ALLOWED)
    first = await login_via_http(browser_session, stack.url + "/first")
    assert first.status == 200
    clock.advance(400)      # the provider's session (and auth_time) is now 400 s old to the proxy
    # max_age=600 at the provider's clock is fine, so it signs in silently with the old auth_time;
    # the proxy asked 300 s and sees 400 s: refused.
    again = await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/in&max_age=600")
    assert again.status == 200
    refused = await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/in&max_age=300")
    # The provider itself sees a fresh-enough session (its clock did not move) and answers at once.
    assert refused.status == 502 and "security check" in refused.body_text
    assert "longer than the max_age of 300s" in caplog.text


async def test_acr_values_the_provider_does_not_meet_refuse_the_sign_in(stack_factory, browser_session, caplog):
    stack = await stack_factory(**ALLOWED)
    result = await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/in&acr_values=urn:example:gold")
    assert result.status == 502 and "security check" in result.body_text
    assert "acr_values 'urn:example:gold' was asked" in caplog.text
