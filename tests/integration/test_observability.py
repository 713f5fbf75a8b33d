"""Metrics move with real traffic (each documented metric, read from ``/metrics``), and no secret reaches the logs
at any level through a whole login → refresh → sign-out cycle against the real provider."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.session import CODEC
from proxy.websocket import SOCKETS
from tests.integration.test_websocket import signed_in, start_ws_app, ws_url
from tests.support.browserless import login_via_http, logout_via_http
from tests.support.echo import header_values
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET
from tests.support.ports import free_port
from tests.support.timing import eventually

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


# -- every documented metric moves, read from /metrics (docs/deployment.md's table, one test each) ------------


async def scrape(stack) -> str:
    async with aiohttp.ClientSession() as anon:
        async with anon.get(stack.url + "/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


async def test_requests_total_and_request_duration_count_each_answer(stack_factory, browser_session):
    stack = await stack_factory(metrics_on_listen=True)
    await login_via_http(browser_session, stack.url + "/")
    before = await scrape(stack)
    for path in ("/a", "/b", "/c"):
        async with browser_session.get(stack.url + path, headers=API) as resp:
            assert resp.status == 200
    async with browser_session.get(stack.url + "/oauth2/nothing-here") as resp:
        assert resp.status == 404
    after = await scrape(stack)
    for name, labels, moved in (("authproxy_requests_total", {"upstream": "/", "status_class": "2xx"}, 3),
                                ("authproxy_requests_total", {"upstream": "proxy", "status_class": "4xx"}, 1),
                                ("authproxy_request_duration_seconds_count", {"upstream": "/"}, 3)):
        assert metric(after, name, **labels) - metric(before, name, **labels) == moved, (name, labels)
    assert metric(after, "authproxy_request_duration_seconds_sum", upstream="/") > 0


async def test_refreshes_total_counts_a_refused_refresh_as_ended(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": 2}, metrics_on_listen=True)
    await login_via_http(browser_session, stack.url + "/")
    session = stack.proxy.app[CODEC].load({c.key: c.value for c in browser_session.cookie_jar
                                           if c.key.startswith("_authproxy")})
    await stack.idp.revoke(session.refresh_token, CLIENT_ID, CLIENT_SECRET)
    await asyncio.sleep(2.3)
    async with browser_session.get(stack.url + "/x", headers=API) as resp:
        assert resp.status == 401
    assert metric(await scrape(stack), "authproxy_refreshes_total", outcome="ended") == 1


async def test_logouts_total_counts_a_sign_out(stack_factory, browser_session):
    stack = await stack_factory(metrics_on_listen=True)
    await login_via_http(browser_session, stack.url + "/")
    assert metric(await scrape(stack), "authproxy_logouts_total") == 0
    await logout_via_http(browser_session, stack.url + "/oauth2/sign_out")
    assert metric(await scrape(stack), "authproxy_logouts_total") == 1


async def test_denied_total_counts_a_signed_in_user_the_rules_refuse(stack_factory, browser_session):
    stack = await stack_factory(metrics_on_listen=True, authorization={"allowed_users": ["bob"]})
    result = await login_via_http(browser_session, stack.url + "/")
    assert result.status == 403
    async with browser_session.get(stack.url + "/again", headers=API) as resp:
        assert resp.status == 403
    assert metric(await scrape(stack), "authproxy_denied_total") == 2


async def test_websockets_active_counts_the_sockets_open_now(stack_factory, browser_session):
    ws_app = await start_ws_app()
    try:
        stack = await stack_factory(metrics_on_listen=True, upstreams=[{"path": "/", "url": ws_app.url}])
        cookie = await signed_in(stack, browser_session)
        assert metric(await scrape(stack), "authproxy_websockets_active") == 0
        async with aiohttp.ClientSession() as client:
            first = await client.ws_connect(ws_url(stack), headers={"Cookie": cookie})
            second = await client.ws_connect(ws_url(stack), headers={"Cookie": cookie})
            assert metric(await scrape(stack), "authproxy_websockets_active") == 2
            await first.close()
            await eventually(lambda: len(stack.proxy.app[SOCKETS]) == 1)
            assert metric(await scrape(stack), "authproxy_websockets_active") == 1
            await second.close()
            await eventually(lambda: len(stack.proxy.app[SOCKETS]) == 0)
        assert metric(await scrape(stack), "authproxy_websockets_active") == 0
    finally:
        await ws_app.runner.cleanup()


async def test_provider_request_duration_times_every_step(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": 2}, metrics_on_listen=True,
                                provider={"use_userinfo": True})
    await login_via_http(browser_session, stack.url + "/")
    await asyncio.sleep(2.3)
    async with browser_session.get(stack.url + "/x", headers=API) as resp:
        assert resp.status == 200
    text = await scrape(stack)
    for step in ("discovery", "jwks", "token exchange", "userinfo", "refresh"):
        assert metric(text, "authproxy_provider_request_duration_seconds_count", step=step) >= 1, step
    assert metric(text, "authproxy_provider_request_duration_seconds_count", step="token exchange") == 1
    assert metric(text, "authproxy_provider_request_duration_seconds_count", step="refresh") == 1


async def test_a_client_that_leaves_before_the_answer_is_a_499_not_a_500(stack_factory, browser_session, caplog):
    """aiohttp cancels the handler of a request whose client went away; that is no error of the proxy's."""
    reached, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/slow":
            reached.set()
            await release.wait()
        return web.Response(text="answer")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        caplog.set_level(logging.INFO, logger="authproxy.access")
        stack = await stack_factory(metrics_on_listen=True,
                                    upstreams=[{"path": "/", "url": f"http://127.0.0.1:{port}"}])
        await login_via_http(browser_session, stack.url + "/")
        request = asyncio.ensure_future(browser_session.get(stack.url + "/slow", headers=API))
        await asyncio.wait_for(reached.wait(), 10)
        request.cancel()                                                   # the client goes away
        await asyncio.gather(request, return_exceptions=True)
        lines = await eventually(lambda: [r.fields for r in caplog.records if r.name == "authproxy.access"
                                          and r.fields["path"] == "/slow"])
        assert [line["status"] for line in lines] == [499]
        text = await scrape(stack)
        assert metric(text, "authproxy_requests_total", upstream="/", status_class="4xx") == 1
        assert metric(text, "authproxy_requests_total", upstream="/", status_class="5xx") == 0
    finally:
        release.set()
        await runner.cleanup()
