"""The boundary: request ids, the access log, and every domain error → its HTTP answer."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from proxy.app import create_app
from proxy.boundary import error_response
from proxy.context import REQUEST_ID
from proxy.errors import ProviderError
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
