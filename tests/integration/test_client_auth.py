"""Client authentication at the real oidc-provider: private_key_jwt, client_secret_jwt, a secret from a file,
and a public client (issue 20).

oidc-provider authenticates each client only by the method it is registered with (a client registered for
``private_key_jwt`` that sends a secret is refused ``invalid_client``), so a sign-in and a refresh that succeed
prove the proxy used the configured method — and the refusals prove the provider really checks what is sent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from tests.support.browserless import login_via_http
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.integration

API = {"Accept": "application/json"}
TTL = 4          # access-token lifetime: a refresh is due after half of it


def _public_jwks(*keys: RSAKey | ECKey, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    jwks = []
    for key in keys:
        jwk = key.as_dict(private=False)
        jwk.update({k: v for k, v in (("kid", kid), ("alg", alg), ("use", "sig")) if v})
        jwks.append(jwk)
    return {"keys": jwks}


async def _signs_in_and_refreshes(stack, session) -> None:
    """A sign-in (code exchange) and then a refresh, both accepted by the provider for CLIENT_ID."""
    result = await login_via_http(session, stack.url + "/page")
    assert result.status == 200, result.body_text[:500]
    assert json.loads(result.body_text)["path"] == "/page"
    await asyncio.sleep(TTL / 2 + 0.3)
    async with session.get(stack.url + "/again", headers=API) as resp:
        assert resp.status == 200
    grants = [e for e in stack.idp.events() if e.get("event") == "grant"]
    assert [(g["grant_type"], g["ok"], g["client_id"]) for g in grants] == [
        ("authorization_code", True, CLIENT_ID), ("refresh_token", True, CLIENT_ID)], grants


async def _refused_at_the_token_endpoint(stack, session) -> None:
    result = await login_via_http(session, stack.url + "/page")
    assert result.status == 502, result.body_text[:500]
    failed = [e for e in stack.idp.events() if e.get("event") == "grant"]
    assert failed and failed[0]["ok"] is False and failed[0]["error"] == "invalid_client", failed


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[RSAKey, Path]:
    key = RSAKey.generate_key(2048, private=True)
    path = tmp_path / "client-key.pem"
    path.write_bytes(key.as_pem(private=True))
    return key, path


def _key_auth(path: Path, **more: Any) -> dict[str, Any]:
    return {"client_secret": None, "token_endpoint_auth_method": "private_key_jwt", "private_key_file": str(path),
            **more}


async def test_private_key_jwt_with_a_pem_key(stack_factory, browser_session, rsa_key):
    key, path = rsa_key
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                client={"token_endpoint_auth_method": "private_key_jwt", "jwks": _public_jwks(key)},
                                provider=_key_auth(path))
    await _signs_in_and_refreshes(stack, browser_session)


async def test_private_key_jwt_with_an_ec_jwk_its_kid_and_the_algorithm_the_client_is_held_to(
        stack_factory, browser_session, tmp_path):
    key = ECKey.generate_key("P-256", private=True)
    other = ECKey.generate_key("P-256", private=True)
    jwk = {**key.as_dict(private=True), "kid": "proxy-ec"}
    (tmp_path / "key.json").write_text(json.dumps({"keys": [jwk]}))
    # Two keys registered: the provider finds ours by kid; ES256 is the only algorithm it takes from us.
    jwks = {"keys": _public_jwks(other, kid="other")["keys"] + _public_jwks(key, kid="proxy-ec")["keys"]}
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                client={"token_endpoint_auth_method": "private_key_jwt", "jwks": jwks,
                                        "token_endpoint_auth_signing_alg": "ES256"},
                                provider=_key_auth(tmp_path / "key.json"))
    await _signs_in_and_refreshes(stack, browser_session)


async def test_private_key_jwt_with_a_certificate_sends_its_thumbprints_and_is_accepted(stack_factory,
                                                                                        browser_session, rsa_key):
    """x5t / x5t#S256 headers (what Entra ID needs) do not disturb a provider that finds keys otherwise."""
    from tests.support.certs import self_signed_pem
    key, path = rsa_key
    cert = path.with_name("client-cert.pem")
    cert.write_bytes(self_signed_pem(key))
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                client={"token_endpoint_auth_method": "private_key_jwt", "jwks": _public_jwks(key)},
                                provider=_key_auth(path, private_key_certificate_file=str(cert)))
    await _signs_in_and_refreshes(stack, browser_session)


async def test_private_key_jwt_signed_with_another_key_is_refused(stack_factory, browser_session, rsa_key, tmp_path):
    registered = RSAKey.generate_key(2048, private=True)
    _, path = rsa_key
    stack = await stack_factory(client={"token_endpoint_auth_method": "private_key_jwt",
                                        "jwks": _public_jwks(registered)},
                                provider=_key_auth(path))
    await _refused_at_the_token_endpoint(stack, browser_session)


async def test_token_endpoint_audience_is_accepted_too(stack_factory, browser_session, rsa_key):
    key, path = rsa_key
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                client={"token_endpoint_auth_method": "private_key_jwt", "jwks": _public_jwks(key)},
                                provider=_key_auth(path, client_assertion_audience="token_endpoint"))
    await _signs_in_and_refreshes(stack, browser_session)


async def test_client_secret_jwt(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                client={"token_endpoint_auth_method": "client_secret_jwt"},
                                provider={"token_endpoint_auth_method": "client_secret_jwt"})
    await _signs_in_and_refreshes(stack, browser_session)


async def test_client_secret_jwt_with_a_wrong_secret_is_refused(stack_factory, browser_session):
    stack = await stack_factory(client={"token_endpoint_auth_method": "client_secret_jwt"},
                                provider={"token_endpoint_auth_method": "client_secret_jwt",
                                          "client_secret": "not-" + CLIENT_SECRET})
    await _refused_at_the_token_endpoint(stack, browser_session)


async def test_public_client_with_pkce_only(stack_factory, browser_session):
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                client={"token_endpoint_auth_method": "none"},
                                provider={"client_secret": None, "token_endpoint_auth_method": "none"})
    await _signs_in_and_refreshes(stack, browser_session)


async def test_client_secret_from_a_file(stack_factory, browser_session, tmp_path):
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    stack = await stack_factory(idp_options={"access_token_ttl": TTL},
                                provider={"client_secret": None, "client_secret_file": str(secret_file)})
    await _signs_in_and_refreshes(stack, browser_session)


async def test_a_rotated_secret_file_takes_effect_on_sighup(idp_factory, tmp_path):
    """The running process: a wrong secret in the file fails at the provider; the right one written and a
    SIGHUP sent, sign-in works; the file removed and a SIGHUP sent, the reload is rejected naming the key."""
    import signal

    import aiohttp

    from tests.support.echo import start_echo
    from tests.support.fixtures import client_metadata
    from tests.support.ports import free_port
    from tests.support.proxyrun import config_dict
    from tests.support.subproc import start_proxy_process

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")])
    echo = await start_echo(free_port())
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("the-old-secret\n")
    data = config_dict(port=port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                       client_secret="unused")
    data["provider"] = {**data["provider"], "client_secret_file": str(secret_file)}
    del data["provider"]["client_secret"]
    proxy = await start_proxy_process(data)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            assert (await login_via_http(session, public + "/page")).status == 502
        assert [e["error"] for e in idp.events() if e.get("event") == "grant"] == ["invalid_client"]
        secret_file.write_text(CLIENT_SECRET + "\n")
        proxy.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "configuration reloaded" in proxy.stderr:
                break
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            for _ in range(50):             # the new listener may still be loading the provider's metadata
                result = await login_via_http(session, public + "/page")
                if result.status != 503:
                    break
                await asyncio.sleep(0.1)
            assert result.status == 200, result.body_text[:300]
        secret_file.unlink()
        proxy.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "reload rejected" in proxy.stderr:
                break
            await asyncio.sleep(0.1)
        assert "reload rejected" in proxy.stderr and "provider.client_secret_file" in proxy.stderr
        assert "the-old-secret" not in proxy.stderr and CLIENT_SECRET not in proxy.stderr
    finally:
        assert await proxy.stop() == 0
        await echo.close()
