"""Policy expressions through the real provider, the real proxy and an echo upstream."""

from __future__ import annotations

import pytest

from tests.support.browserless import login_via_http

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
RULE = 'user == "alice" && (method == "GET" || path.startsWith("/inbox/"))'


async def test_a_rule_on_the_user_and_the_request_decides_each_request(stack_factory, browser_session):
    stack = await stack_factory(authorization={"rules": [RULE]})
    await login_via_http(browser_session, stack.url + "/")
    async with browser_session.get(stack.url + "/page", headers=API) as resp:
        assert resp.status == 200
    async with browser_session.post(stack.url + "/page", headers=API, data=b"x") as resp:
        assert resp.status == 403
    async with browser_session.post(stack.url + "/inbox/1", headers=API, data=b"x") as resp:
        assert resp.status == 200


async def test_another_user_is_refused_by_the_rule(stack_factory, browser_session):
    stack = await stack_factory(authorization={"rules": ['user == "bob"']})
    await login_via_http(browser_session, stack.url + "/")
    async with browser_session.get(stack.url + "/page", headers=API) as resp:
        assert resp.status == 403


@pytest.mark.parametrize("trusted", [True, False])
async def test_forward_auth_sees_the_ingress_request_only_from_a_trusted_proxy(stack_factory, browser_session,
                                                                             trusted):
    sections = {"trusted_proxies": ["127.0.0.1/32"]} if trusted else {}
    stack = await stack_factory(authorization={"rules": ['method == "GET"']}, **sections)
    await login_via_http(browser_session, stack.url + "/")
    get = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/app/x", "X-Forwarded-Host": "app.example.com"}
    async with browser_session.get(stack.url + "/oauth2/auth", headers=get) as resp:
        assert resp.status == (202 if trusted else 403)  # untrusted: the request is unknown, so the rule denies
    async with browser_session.get(stack.url + "/oauth2/auth", headers={**get, "X-Forwarded-Method": "POST"}) as resp:
        assert resp.status == 403
