"""One request to the identity provider and its answer, parsed — the only HTTP in ``proxy.provider``.

Discovery, the JWKS, the grants and userinfo all go through ``ProviderClient.call``, so what every
exchange with the provider shares sits in one place: the configured timeout, no redirects followed, at
most ``MAX_RESPONSE_BYTES`` read, the ``User-Agent``, the per-step latency metric, and the mapping of
every failure to one of two errors. An answer that cannot be parsed — not JSON, too large, nested too
deep — is a ``ProviderError``; an OAuth ``error`` (RFC 6749 §5.2) is a ``TokenRejected``. Callers never
see aiohttp exceptions.
"""

from __future__ import annotations

import json
import ssl as ssl_module
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import aiohttp

from .. import __version__
from ..errors import ProviderError, TokenRejected
from ..metrics import Metrics

# Largest provider response we read (discovery, JWKS, tokens, userinfo).
MAX_RESPONSE_BYTES = 1 << 20
USER_AGENT = f"authproxy/{__version__}"
# Seconds an idle connection to the provider is kept for reuse: under the 5 s keep-alive timeout of
# Node.js and Apache. Kept longer (aiohttp's default is 15 s), a request can go out on a connection the
# server is closing at that moment — its idle timer fires late on a busy machine — and a token exchange
# fails with a reset (tests/integration/test_provider_keepalive.py). A grant is never sent twice, so
# the only safe cure is not to send it on such a connection.
KEEPALIVE = 4.0


def provider_http(ssl: ssl_module.SSLContext | None) -> aiohttp.ClientSession:
    """The HTTP client every call to the provider goes through (one per app)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl if ssl is not None else True,
                                                                keepalive_timeout=KEEPALIVE),
                                 cookie_jar=aiohttp.DummyCookieJar())


class ProviderClient:
    """The provider's HTTP client (a shared ``aiohttp.ClientSession``) with its timeout and metrics."""

    def __init__(self, http: aiohttp.ClientSession, timeout: float, metrics: Metrics | None = None) -> None:
        self._http = http
        self._timeout = timeout
        self._metrics = metrics

    async def get_json(self, step: str, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = await self.call(step, "GET", url, headers=headers)
        return answer

    async def call(self, step: str, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                   data: Mapping[str, str] | None = None, as_list: bool = False, timeout: float | None = None,
                   created: bool = False) -> Any:
        """One request to the provider; the parsed JSON answer, or the error that says what failed.
        ``timeout``: the whole call's bound, if longer than ``provider.timeout`` (which still bounds connecting);
        ``created``: the answer is 201 Created (a pushed authorization request, RFC 9126 §2.2)."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        started = time.perf_counter()
        limit = max(timeout or 0.0, self._timeout)
        try:
            async with self._http.request(method, url, headers=headers, allow_redirects=False, data=data,
                                          timeout=aiohttp.ClientTimeout(total=limit, connect=self._timeout)) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status, content_type = resp.status, resp.content_type
            if self._metrics is not None:
                self._metrics.provider_seconds.labels(step).observe(time.perf_counter() - started)
        except TimeoutError:
            raise ProviderError(step, f"no answer within {limit:g}s", transient=True) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(step, f"could not connect ({type(exc).__name__})", transient=True) from None
        if created and status == 201:
            status = 200
        elif created and status == 200:
            raise ProviderError(step, "it answered HTTP 200, not 201 Created (RFC 9126 §2.2)")
        return _answer(step, status, content_type, raw, as_list=as_list)


def _answer(step: str, status: int, content_type: str, raw: bytes, *, as_list: bool) -> Any:
    """The body of a complete answer, or the error its status, size or content says it is."""
    if len(raw) > MAX_RESPONSE_BYTES:
        raise ProviderError(step, "the answer is larger than 1 MiB")
    if status >= 500:
        raise ProviderError(step, f"it answered HTTP {status}", transient=True)
    body = _parse_body(raw, content_type)
    if as_list and status == 200 and isinstance(body, list):
        return body
    if not isinstance(body, dict):
        raise ProviderError(step, f"it answered HTTP {status} with something that is not a JSON object",
                            http_status=status if status != 200 else None)
    # RFC 6749 §5.2 errors come with 400/401 — and from GitHub with 200.
    if isinstance(body.get("error"), str) and (status >= 400 or "access_token" not in body):
        desc = body.get("error_description")
        raise TokenRejected(step, body["error"][:80], desc if isinstance(desc, str) else None)
    if status != 200:
        raise ProviderError(step, f"it answered HTTP {status}", http_status=status)
    return body


def _parse_body(raw: bytes, content_type: str) -> Any:
    """JSON, or a form-encoded token response (GitHub's answer when asked without ``Accept``); None
    for anything else — nesting too deep for the parser (``RecursionError``) included."""
    if content_type == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
