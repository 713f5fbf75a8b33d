"""Operator mistakes that the real oidc-provider reports, answered with what to change (issue 20)."""

from __future__ import annotations

import pytest

from tests.support.browserless import login_via_http

pytestmark = pytest.mark.integration


async def test_invalid_scope_says_it_is_the_providers_scope_setting(stack_factory, browser_session):
    # The client may ask for openid and email only; the proxy asks for profile and offline_access too.
    stack = await stack_factory(client={"scope": "openid email"})
    result = await login_via_http(browser_session, stack.url + "/page")
    assert result.status == 403
    assert "invalid_scope" in result.body_text
    assert "not a permission of your account" in result.body_text
    assert "openid email profile offline_access" in result.body_text
