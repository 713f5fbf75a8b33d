"""``authproxy --check-config FILE --online``: the configuration tried against the provider itself.

What validation alone cannot know, asked of the provider the way a sign-in would, without a user:

1. discovery (with every check ``Provider.load_metadata`` makes: the issuer's exact spelling, the client
   authentication method, the assertion algorithm, the PAR endpoint);
2. the JWKS: readable, with a key for one of ``id_token_algorithms``;
3. the authorization request (pushed first, with PAR): a provider that refuses it outright — most often an
   unregistered ``redirect_uri``, or a scope or response mode the client may not use — says so before any
   user sees an error page;
4. the client's credentials: a code exchange with a code that cannot exist. A provider authenticates the
   client first, so ``invalid_grant`` means the credentials passed, ``invalid_client`` that they did not.

Each step's outcome is one line; a failed step is a problem, and the command exits 2.
"""

from __future__ import annotations

import ssl
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp

from ..config import Config
from ..crypto import pkce_pair, random_token, tls_context
from ..errors import ProviderError, TokenRejected
from . import Provider

# oidc-provider, Keycloak and most others answer a request they refuse before any sign-in with a 4xx page.
_REFUSED = range(400, 500)


async def check_online(config: Config) -> tuple[list[str], list[str]]:
    """(what passed, what failed), one line each."""
    ok: list[str] = []
    problems: list[str] = []
    ssl_ctx: ssl.SSLContext | bool = tls_context(config.provider.ca_file) if config.provider.ca_file else True
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        provider = Provider(config.provider, config.redirect_uri, http, time.time)
        try:
            meta = await provider.load_metadata()
        except ProviderError as exc:
            return ok, [f"discovery: {exc.detail}"]
        ok.append(f"discovery: endpoints of {meta.issuer or meta.authorization_endpoint}")
        if provider.is_oidc:
            await _jwks(provider, config, ok, problems)
        await _authorization_request(provider, http, config, ok, problems)
        await _credentials(provider, config, ok, problems)
    return ok, problems


async def _jwks(provider: Provider, config: Config, ok: list[str], problems: list[str]) -> None:
    try:
        await provider.jwks.load()
    except ProviderError as exc:
        problems.append(f"jwks: {exc.detail}")
        return
    algorithms = config.provider.id_token_algorithms
    usable = [key for key in (provider.jwks.keys.keys if provider.jwks.keys else [])
              if key.get("use") in (None, "sig") and key.get("alg") in (None, *algorithms)]
    if usable:
        ok.append(f"jwks: {len(usable)} signing key(s)")
    else:
        problems.append(f"jwks: no signing key for id_token_algorithms {', '.join(algorithms)}")


async def _authorization_request(provider: Provider, http: aiohttp.ClientSession, config: Config, ok: list[str],
                                 problems: list[str]) -> None:
    _, challenge = pkce_pair()
    try:
        url = await provider.authorization_url(state=random_token(), code_challenge=challenge,
                                               nonce=random_token() if provider.is_oidc else None)
    except ProviderError as exc:
        problems.append(f"authorization request: {exc}")
        return
    try:
        async with http.get(url, allow_redirects=False,
                            timeout=aiohttp.ClientTimeout(total=config.provider.timeout)) as resp:
            status, location = resp.status, resp.headers.get("Location", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        problems.append(f"authorization request: could not connect ({type(exc).__name__})")
        return
    error = parse_qs(urlsplit(location).query).get("error", [""])[0] if location.startswith(
        config.redirect_uri) else ""
    if status in _REFUSED:
        problems.append(f"authorization request: the provider refused it (HTTP {status}); most often the redirect "
                        f"URI is not registered for this client: register {config.redirect_uri}")
    elif error:
        problems.append(f"authorization request: the provider sent back error={error[:80]} (check provider.scopes, "
                        "response_mode and the client's allowed grant types at the provider)")
    else:
        ok.append(f"authorization request: accepted (HTTP {status}), redirect URI {config.redirect_uri}")


async def _credentials(provider: Provider, config: Config, ok: list[str], problems: list[str]) -> None:
    method = config.provider.token_endpoint_auth_method
    verifier, _ = pkce_pair()
    try:
        await provider.exchange_code("authproxy-online-check-" + random_token(), verifier)
    except TokenRejected as exc:
        if exc.code == "invalid_grant":
            ok.append(f"client authentication ({method}): accepted (a made-up code was refused as invalid_grant)")
        elif exc.code in ("invalid_client", "unauthorized_client"):
            problems.append(f"client authentication ({method}): the provider refused the client ({exc.code}); "
                            "check client_id and the secret or key, and the method registered at the provider")
        else:
            ok.append(f"client authentication ({method}): not known (the provider answered {exc.code})")
    except ProviderError as exc:
        problems.append(f"client authentication ({method}): {exc.detail}")
    else:
        problems.append("client authentication: the provider accepted a made-up code")
