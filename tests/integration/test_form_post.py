"""``provider.response_mode: form_post`` against the real oidc-provider (issue 20).

The provider answers with a page whose form the browser auto-submits to /oauth2/callback as a cross-site
POST; the test parses that form and POSTs it, as the browser would. Such a POST carries only SameSite=None
cookies, so the login cookie is SameSite=None (and Secure) with form_post — and only it: the session cookie
keeps cookie.samesite. A hostile page that POSTs to the callback gets nothing out of it.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.support.browserless import _forms, login_via_http

pytestmark = pytest.mark.integration

FORM_POST = {"provider": {"response_mode": "form_post"}, "cookie": {"secure": True}}


@pytest.fixture
async def fp_stack(stack_factory):
    return await stack_factory(**FORM_POST)


def _jar(stack) -> aiohttp.CookieJar:
    # Secure cookies over http://127.0.0.1, as browsers treat loopback as a secure context.
    return aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[stack.url])


async def _provider_form(session: aiohttp.ClientSession, stack) -> tuple[str, dict[str, str]]:
    """Sign in at the provider and return the auto-submitting form it answers with: (action, fields)."""
    page = await login_via_http(session, stack.url + "/landing?x=1")
    assert page.url.startswith(stack.idp.base_url), page.url       # the provider's page, not ours
    (form,) = _forms(page.body_text)
    assert form.method == "post" and form.action == stack.url + "/oauth2/callback"
    return form.action, form.fields


async def test_the_provider_posts_the_response_and_the_sign_in_completes(fp_stack):
    stack = fp_stack
    async with aiohttp.ClientSession(cookie_jar=_jar(stack)) as session:
        async with session.get(stack.url + "/oauth2/start?rd=/x", allow_redirects=False) as resp:
            location = resp.headers["Location"]
            login_cookie = [c for c in resp.headers.getall("Set-Cookie") if "_login_" in c]
        assert "response_mode=form_post" in location
        assert len(login_cookie) == 1 and "SameSite=None" in login_cookie[0] and "Secure" in login_cookie[0]
        action, fields = await _provider_form(session, stack)
        assert set(fields) == {"code", "state", "iss"}
        async with session.post(action, data=fields, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            assert resp.headers["Location"] == stack.url + "/landing?x=1"
            session_cookie = [c for c in resp.headers.getall("Set-Cookie") if "_login_" not in c]
            assert session_cookie and all("SameSite=Lax" in c for c in session_cookie)
        async with session.get(stack.url + "/landing?x=1", headers={"Accept": "application/json"}) as resp:
            assert resp.status == 200 and json.loads(await resp.text())["path"] == "/landing"
        # The same response again: the state was spent with the first POST.
        async with session.post(action, data=fields, allow_redirects=False) as resp:
            assert resp.status == 403


async def test_a_cross_site_post_without_the_login_cookie_is_refused(fp_stack):
    stack = fp_stack
    async with aiohttp.ClientSession(cookie_jar=_jar(stack)) as victim:
        action, fields = await _provider_form(victim, stack)
    # The hostile page's POST from another browser: valid code and state, but no login cookie to match.
    async with aiohttp.ClientSession(cookie_jar=_jar(stack)) as other:
        async with other.post(action, data=fields, headers={"Origin": "https://evil.example"},
                              allow_redirects=False) as resp:
            assert resp.status == 403
            assert "does not belong to a sign-in started in this browser" in await resp.text()
            assert not [c for c in resp.headers.getall("Set-Cookie", ()) if c.startswith("__Host-authproxy=")]
    assert stack.idp.count_grants("authorization_code", ok=None) == 0           # the code was never spent


async def test_a_forged_state_with_the_victims_cookie_is_refused_and_the_code_unspent(fp_stack):
    stack = fp_stack
    async with aiohttp.ClientSession(cookie_jar=_jar(stack)) as session:
        action, fields = await _provider_form(session, stack)
        forged = {**fields, "state": "attacker-chosen"}
        async with session.post(action, data=forged, allow_redirects=False) as resp:
            assert resp.status == 403
        twice = [*fields.items(), ("code", "attacker-code")]
        async with session.post(action, data=twice, allow_redirects=False) as resp:
            assert resp.status == 400 and "more than once" in await resp.text()
        async with session.post(action, json=fields, allow_redirects=False) as resp:
            assert resp.status == 400 and "not a form" in await resp.text()
        async with session.post(action, data={**fields, "pad": "x" * 20000}, allow_redirects=False) as resp:
            assert resp.status == 400 and "too large" in await resp.text()
        # The response in the URL, when the proxy asked for a POST, is not taken either.
        async with session.get(action, params=fields, allow_redirects=False) as resp:
            assert resp.status == 400 and "as a form" in await resp.text()
    assert stack.idp.count_grants("authorization_code", ok=None) == 0


async def test_without_form_post_the_callback_takes_no_post(stack, browser_session):
    async with browser_session.post(stack.url + "/oauth2/callback", data={"code": "c", "state": "s"},
                                    allow_redirects=False) as resp:
        assert resp.status == 405
    async with browser_session.get(stack.url + "/oauth2/start", allow_redirects=False) as resp:
        assert "response_mode" not in resp.headers["Location"]
        assert all("SameSite=Lax" in c for c in resp.headers.getall("Set-Cookie"))
