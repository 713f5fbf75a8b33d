"""The boundary: request ids, the access log, and every domain error → its HTTP answer."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.app import create_app
from proxy.boundary import error_boundary, error_response, stamp_response
from proxy.context import CONFIG, REQUEST_ID
from proxy.errors import AuthorizationDenied, NotFound, ProviderError, StoreUnavailable, UpstreamError
from proxy.metrics import Metrics
from tests.support.unit_app import unit_app, unit_config
from tests.unit.conftest import make_config


def test_a_failed_callback_offers_a_new_sign_in_never_the_callback_url_again():
    """A callback that fails after its state is spent (the provider's token endpoint down, say) must not offer
    "Try again" to the same URL: that is a 403 at best, and it puts the code into a link."""
    config = make_config()
    app = create_app(config)
    request = make_mocked_request("GET", "/oauth2/callback?code=CODE123&state=STATE456", app=app,
                                  headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"})
    request[REQUEST_ID] = "rid-1"
    page = error_response(request, ProviderError("token", "the provider answered 500"), config).text
    assert "CODE123" not in page and "STATE456" not in page
    assert "/oauth2/start?rd=" in page and "Sign in again" in page


# -- the middleware, behind a small app of its own ------------------------------------------------------


def _app(handler, *, path: str = "/x", metrics: Metrics | None = None) -> web.Application:
    config = make_config()
    app = web.Application(middlewares=[error_boundary(config, metrics or Metrics())])
    app[CONFIG] = config
    app.on_response_prepare.append(stamp_response)
    app.router.add_route("*", path, handler)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text=request[REQUEST_ID])


async def test_a_client_request_id_is_kept_only_when_it_looks_like_one(aiohttp_client):
    client = await aiohttp_client(_app(_ok))
    kept = await client.get("/x", headers={"X-Request-Id": "trace-42.a:b"})
    assert await kept.text() == "trace-42.a:b" and kept.headers["X-Request-Id"] == "trace-42.a:b"
    for hostile in ("a b", "x\u00e9", "x" * 129, "id%0d%0aSet-Cookie"):
        replaced = await client.get("/x", headers={"X-Request-Id": hostile})
        assert await replaced.text() != hostile
    one, two = [await (await client.get("/x")).text() for _ in range(2)]
    assert one != two and one.split("-")[:-1] == two.split("-")[:-1]       # one prefix per app, then a counter


async def test_the_proxys_own_answers_are_never_cached_the_apps_are_left_alone(aiohttp_client):
    app = _app(_ok, path="/oauth2/x")
    app.router.add_get("/app", _ok)
    client = await aiohttp_client(app)
    assert (await client.get("/oauth2/x")).headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in (await client.get("/app")).headers


async def test_a_redirect_raised_by_a_handler_passes_through_and_is_logged_with_its_status(aiohttp_client, caplog):
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    caplog.set_level(logging.INFO, logger="authproxy.access")
    client = await aiohttp_client(_app(redirect))
    response = await client.get("/x", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/elsewhere"
    [line] = [r for r in caplog.records if r.name == "authproxy.access"]
    assert line.fields["status"] == 302 and line.fields["request_id"] == response.headers["X-Request-Id"]


async def test_a_bug_is_a_500_with_the_traceback_in_the_log_only(aiohttp_client, caplog):
    async def broken(request: web.Request) -> web.Response:
        raise KeyError("secret-detail")

    client = await aiohttp_client(_app(broken))
    response = await client.get("/x", headers={"Accept": "application/json"})
    assert response.status == 500
    body = await response.json()
    assert body == {"error": "AuthProxyError", "message": "An unexpected error happened in the proxy.",
                    "request_id": response.headers["X-Request-Id"]}
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and "secret-detail" not in await response.text()


async def test_a_failure_is_logged_as_one_a_refusal_is_not(aiohttp_client, caplog):
    async def failing(request: web.Request) -> web.Response:
        raise UpstreamError("The application refused the connection.")

    async def refusing(request: web.Request) -> web.Response:
        raise NotFound("Nothing here.")

    app = _app(failing)
    app.router.add_get("/missing", refusing)
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO, logger="authproxy")
    failed = await client.get("/x")
    assert any(r.levelno == logging.WARNING and "UpstreamError" in r.getMessage()
               and failed.headers["X-Request-Id"] in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert (await client.get("/missing")).status == 404
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_failed_callback_counts_as_a_failed_sign_in_by_its_code(aiohttp_client):
    async def callback(request: web.Request) -> web.Response:
        raise AuthorizationDenied("access_denied")

    metrics = Metrics()
    client = await aiohttp_client(_app(callback, path="/oauth2/callback", metrics=metrics))
    assert (await client.get("/oauth2/callback")).status == 403
    failed = {sample.labels["reason"]: sample.value for family in metrics.registry.collect()
              for sample in family.samples
              if sample.name == "authproxy_logins_total" and sample.labels.get("stage") == "failed"}
    assert failed == {"AuthorizationDenied": 1.0}


async def test_a_navigation_that_cannot_start_a_login_gets_a_page_not_a_crash(aiohttp_client):
    """Unauthenticated on a page load is a redirect to the provider; with its metadata not loaded (discovery
    from a closed port) that redirect cannot be made, and the failure is answered like a handler's own."""
    config = unit_config(provider={"authorization_endpoint": None, "token_endpoint": None, "jwks_uri": None})
    client = await aiohttp_client(unit_app(config))
    response = await client.get("/page", headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"},
                                allow_redirects=False)
    assert response.status == 502 and response.content_type == "text/html"
    text = await response.text()
    assert "metadata has not been loaded yet" in text and 'href="https://app.example.com/page"' in text


def test_a_browser_gets_a_page_an_api_client_json():
    config = make_config()
    app = create_app(config)
    exc = StoreUnavailable("Redis could not be reached (ConnectionError).")
    page = make_mocked_request("GET", "/x", app=app, headers={"Accept": "text/html"})
    api = make_mocked_request("GET", "/x", app=app, headers={"Accept": "application/json"})
    for request in (page, api):
        request[REQUEST_ID] = "rid-2"
    assert error_response(page, exc, config).content_type == "text/html"
    assert json.loads(error_response(api, exc, config).text) == {
        "error": "StoreUnavailable", "message": "Redis could not be reached (ConnectionError).", "request_id": "rid-2"}
