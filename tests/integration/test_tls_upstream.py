"""https upstreams: the certificate is checked against tls.ca_file, or not at all with insecure_skip_verify."""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.support.browserless import login_via_http
from tests.support.ports import free_port
from tests.support.tls import self_signed, server_context

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}


@pytest.fixture
async def https_upstream(tmp_path):
    cert, key = self_signed(tmp_path)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"scheme": request.scheme, "user": request.headers.get("X-Forwarded-User")})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(cert, key)).start()
    yield f"https://127.0.0.1:{port}", str(cert)
    await runner.cleanup()


@pytest.mark.parametrize("tls,expected", [
    ("ca_file", 200),                 # trusted through the operator's CA bundle
    ("insecure", 200),                # not checked at all
    ("none", 502),                    # the system CAs do not know a self-signed certificate
])
async def test_https_upstream_certificate_checks(stack_factory, https_upstream, browser_session, tls, expected):
    url, cert = https_upstream
    settings = {"ca_file": {"ca_file": cert}, "insecure": {"insecure_skip_verify": True}, "none": {}}[tls]
    stack = await stack_factory(upstreams=[{"path": "/", "url": url, "tls": settings}])
    await login_via_http(browser_session, stack.url + "/oauth2/start?rd=/oauth2/userinfo")
    async with browser_session.get(stack.url + "/hello", headers=API) as resp:
        assert resp.status == expected
        if expected == 200:
            assert await resp.json() == {"scheme": "https", "user": "alice"}
