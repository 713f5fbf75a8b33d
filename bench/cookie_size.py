"""Session cookie sizes with the real provider's tokens: ``cookie.minimal`` off and on, for a few token shapes.

For each shape (oidc-provider's opaque access tokens; RFC 9068 JWT access tokens carrying email, username
and groups; and the JWT shape with 40 groups of 24 characters released in the ID token too) it starts the
real oidc-provider (tests/idp), an echo upstream and authproxy in-process, signs in over plain HTTP, and
prints the session cookies' size as the browser sends them back (``name=value`` joined by ``"; "``) and the
``Set-Cookie`` bytes (attributes included, what ``cookie.header_budget`` is held against), with the ID
token's share. Everything listens on 127.0.0.1.

    python bench/cookie_size.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from proxy.session import CODEC, STORE
from tests.support.browserless import login_via_http
from tests.support.echo import start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.idp import start_idp
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict, start_proxy

GROUPS = [f"department-{i:03d}-readers-eu" for i in range(40)]
SHAPES: dict[str, dict[str, Any]] = {
    "opaque access token": {},
    "JWT access token": {"jwt_access_token_audience": "https://api.example.test"},
    "JWT access token, 40 groups": {"jwt_access_token_audience": "https://api.example.test",
                                    "extra_claims": {"groups": GROUPS}},
}


async def measure(idp_options: dict[str, Any], minimal: bool) -> tuple[int, int, int, int]:
    """(cookies sent back, Set-Cookie bytes, number of cookies, ID token bytes) after one sign-in."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_idp(clients=[client_metadata(public + "/oauth2/callback")], **idp_options)
    echo = await start_echo(free_port())
    scopes = ["openid", "email", "profile", "offline_access"] + (["groups"] if "extra_claims" in idp_options else [])
    provider = {"scopes": scopes, "use_userinfo": False} if "jwt_access_token_audience" in idp_options \
        else {"scopes": scopes}
    data = config_dict(port=port, issuer=idp.issuer, upstream_url=echo.url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET, provider=provider,
                       cookie={"minimal": minimal})
    proxy = await start_proxy(data)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await login_via_http(browser, public + "/")
            name = proxy.config.cookie.name
            pairs = [(c.key, c.value) for c in browser.cookie_jar if c.key == name or c.key.startswith(name + "_")]
            pairs = [p for p in pairs if "_login_" not in p[0]]
            sent = len("; ".join(f"{k}={v}" for k, v in pairs))
            codec = proxy.app[CODEC]
            set_cookie = sum(len(codec.set_header(k, v, proxy.config.cookie.expire)) for k, v in pairs)
            session = await proxy.app[STORE].load(dict(pairs))
            assert session is not None
            id_token = 0 if session.id_token is None else len(session.id_token)
            return sent, set_cookie, len(pairs), id_token
    finally:
        await proxy.close()
        await echo.close()
        await idp.stop()


async def main() -> None:
    print(f"{'token shape':32} {'minimal':8} {'Cookie sent':>12} {'Set-Cookie':>11} {'cookies':>8} {'ID token':>9}")
    for label, options in SHAPES.items():
        for minimal in (False, True):
            sent, set_cookie, count, id_token = await measure(options, minimal)
            print(f"{label:32} {str(minimal).lower():8} {sent:12d} {set_cookie:11d} {count:8d} {id_token:9d}")


if __name__ == "__main__":
    asyncio.run(main())
