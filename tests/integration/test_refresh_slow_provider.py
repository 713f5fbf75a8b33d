"""A provider slower than our patience must never cost a session (issue 19's soak: 17 of 20 lost).

The real oidc-provider, with rotating refresh tokens, is frozen (SIGSTOP) while a refresh grant is on its
way: it keeps the request in its socket and, once thawed, answers it and rotates the refresh token, for a
caller that gave up long ago. The proxy must have kept waiting for that answer (the request that started
the grant gets its 503 meanwhile) and serve the new tokens to the session's next request, instead of
sending the spent refresh token again — which the provider refuses as reuse, signing the user out.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.integration.test_redis_sessions import redis_section
from tests.integration.test_refresh import API, bearer, cookie_header
from tests.support.browserless import login_via_http

pytestmark = pytest.mark.integration

TTL = 4            # access token lifetime at the provider
PATIENCE = 1       # provider.timeout: how long a request waits for the provider


async def _eventually(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("store", ["cookie", "redis"])
async def test_a_refresh_grant_answered_after_the_request_gave_up_keeps_the_session(
        stack_factory, redis_server, browser_session, store):
    sections = {"session": redis_section(redis_server.url)} if store == "redis" else {}
    stack = await stack_factory(idp_options={"access_token_ttl": TTL, "rotate_refresh_token": True},
                                provider={"timeout": f"{PATIENCE}s"}, **sections)
    first = bearer(json.loads((await login_via_http(browser_session, stack.url + "/")).body_text))
    old_cookie = cookie_header(browser_session)
    # Expired, so this request must refresh; and past node's 5 s keep-alive, so the grant goes on a new
    # connection (an idle one would be closed by node's timer on thaw, and the grant with it, unprocessed).
    await asyncio.sleep(TTL + 2)
    stack.idp.freeze()
    try:
        started = time.monotonic()
        async with browser_session.get(stack.url + "/while-frozen", headers=API) as resp:
            assert resp.status == 503                               # the request's patience, not the grant's
        assert time.monotonic() - started < PATIENCE + 3
        await asyncio.sleep(PATIENCE * 2)                           # the provider holds the grant longer still
    finally:
        stack.idp.thaw()
    await _eventually(lambda: stack.idp.count_grants("refresh_token", ok=None) >= 1)
    assert stack.idp.count_grants("refresh_token") == 1            # the provider did rotate, for us
    await asyncio.sleep(0.5)                                        # our side takes the answer in
    async with browser_session.get(stack.url + "/after", headers=API) as resp:
        assert resp.status == 200
        assert bearer(await resp.json()) != first
    if store == "cookie":                                           # the tokens live in the cookie: a new one
        assert cookie_header(browser_session) != old_cookie
    assert stack.idp.count_grants("refresh_token", ok=False) == 0   # the spent token was never sent again
    assert stack.idp.count_grants("refresh_token") == 1
