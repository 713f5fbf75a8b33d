"""Metrics move with real traffic, and no secret reaches the logs at any level through a whole
login → refresh → sign-out cycle against the real provider."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.session import CODEC
from tests.support.browserless import login_via_http, logout_via_http
from tests.support.echo import header_values
from tests.support.fixtures import CLIENT_SECRET

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}


def metric(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_metrics_count_logins_requests_and_refreshes(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": 2}, metrics_on_listen=True)
    await login_via_http(browser_session, stack.url + "/")
    await asyncio.sleep(1.3)
    async with browser_session.get(stack.url + "/x", headers=API) as resp:
        assert resp.status == 200
    async with aiohttp.ClientSession() as anon:
        async with anon.get(stack.url + "/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
    assert metric(text, "authproxy_logins_total", stage="started") == 1
    assert metric(text, "authproxy_logins_total", stage="completed") == 1
    assert metric(text, "authproxy_refreshes_total", outcome="success") == 1
    assert metric(text, "authproxy_requests_total", upstream="/", status_class="2xx") >= 2
    assert metric(text, "authproxy_upstream_duration_seconds_count", upstream="/") >= 2
    assert metric(text, "authproxy_provider_request_duration_seconds_count", step="token exchange") == 1


async def test_failed_login_is_counted_by_reason(stack_factory, browser_session):
    stack = await stack_factory(metrics_on_listen=True)
    async with browser_session.get(stack.url + "/oauth2/callback?state=nope&code=x") as resp:
        assert resp.status == 403
    async with browser_session.get(stack.url + "/metrics") as resp:
        text = await resp.text()
    assert metric(text, "authproxy_logins_total", stage="failed", reason="StateMismatch") == 1


async def test_no_secret_in_logs_through_login_refresh_logout(stack_factory, browser_session, caplog):
    caplog.set_level(logging.DEBUG)
    stack = await stack_factory(idp_options={"access_token_ttl": 2})
    result = await login_via_http(browser_session, stack.url + "/first?x=1")
    code = next(url.split("code=")[1].split("&")[0] for url in result.visited
                if url.split("?")[0].endswith("/oauth2/callback"))
    session = stack.proxy.app[CODEC].load({c.key: c.value for c in browser_session.cookie_jar
                                           if c.key.startswith("_authproxy")})
    first_cookie = next(c.value for c in browser_session.cookie_jar if c.key == "_authproxy")
    await asyncio.sleep(1.3)
    async with browser_session.get(stack.url + "/second", headers=API) as resp:
        refreshed = header_values(await resp.json(), "Authorization")[0].removeprefix("Bearer ")
    await logout_via_http(browser_session, stack.url + "/oauth2/sign_out")
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')} {r.exc_text or ''}" for r in caplog.records)
    assert "login: sub=alice" in logged and "refresh success" in logged and "logout: sub=alice" in logged
    secrets = {"code": code, "access token": session.access_token, "refresh token": session.refresh_token,
               "id token": session.id_token, "refreshed token": refreshed, "cookie": first_cookie,
               "client secret": CLIENT_SECRET, "cookie secret": stack.proxy.config.cookie.secret[0].get()}
    for what, value in secrets.items():
        assert value and value not in logged, f"the {what} appears in the logs"
