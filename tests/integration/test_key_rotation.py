"""The provider rotates its signing key: logins keep working after one JWKS refetch, no restart."""

from __future__ import annotations

import json

import aiohttp
import pytest

from proxy.context import PROVIDER
from tests.support.browserless import login_via_http
from tests.support.idp import generate_jwks

pytestmark = pytest.mark.integration


async def test_new_signing_key_is_picked_up(stack_factory):
    first_keys = generate_jwks("RSA", kid="rsa-1")
    stack = await stack_factory(idp_options={"jwks": first_keys})
    provider = stack.proxy.app[PROVIDER]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        assert (await login_via_http(browser, stack.url + "/one")).status == 200
    fetched_before = provider.jwks.fetched_at
    assert {k.kid for k in provider.jwks.keys.keys} == {"rsa-1"}

    await stack.idp.restart(jwks=generate_jwks("EC", kid="ec-2"))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        result = await login_via_http(browser, stack.url + "/two")
        assert result.status == 200 and json.loads(result.body_text)["path"] == "/two"
    assert {k.kid for k in provider.jwks.keys.keys} == {"ec-2"}
    assert provider.jwks.fetched_at > fetched_before
