"""The users of the soak (bench/soak.py): each signs in with its own cookie jar and does what a browser
and its scripts do, one thing at a time plus at most one long-lived stream, until the soak ends.

Every request becomes a ``Record`` (when it started and ended, what it was, how it went); the soak judges
the records against the faults afterwards (bench/soak_report.py). What a user sees is named plainly:

- ``ok``: the answer the app gave (200, the right number of bytes or events, the echo on the WebSocket);
- ``status:N``: another status from the proxy; ``session_lost``: a 401 or a redirect to the login page for
  a user who never signed out — it signs in again and goes on;
- ``error:Name``: no answer (the connection failed, was cut, or timed out); ``short``: a download or a
  stream that ended early; ``login_failed``: the sign-in did not end on the app's page.

Loads are bounded: every request has a timeout, every loop stops at ``Load.end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.browserless import login_via_http, logout_via_http

# What one user does next, and how often (relative weights).
ACTIONS = {"page": 34, "api": 34, "upload": 5, "download": 5, "sse": 8, "ws": 8, "relogin": 3}
UPLOAD_BYTES = 2 * 1024 * 1024
DOWNLOAD_BYTES = 3 * 1024 * 1024
SSE_EVENTS, SSE_EVERY = 8, 0.5
# A WebSocket stays open this long (seconds, drawn uniformly) and says something every WS_EVERY seconds.
WS_LIFE = (8.0, 30.0)
WS_EVERY = 1.0
# How long after the end of its session the proxy may take to close a WebSocket.
WS_CLOSE_LIMIT = 5.0
# Seconds between a user's requests (drawn uniformly): what keeps the load modest on a shared 2-core machine.
THINK = (0.5, 2.0)
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=40, sock_connect=10)
HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}
LOGIN_PATHS = ("/oauth2/start", "/auth", "/oauth2/sign_in")


@dataclass
class Record:
    start: float
    end: float
    user: int
    kind: str                  # page, api, upload, download, sse, ws, login, logout, hostile
    upstream: str              # "tcp", "unix" or "" (the proxy's own pages, the provider)
    outcome: str
    detail: str = ""


@dataclass
class Load:
    """What every user shares: the clock, where to go, when to stop, and the records."""

    url: str
    end: float
    t0: float = field(default_factory=time.monotonic)
    records: list[Record] = field(default_factory=list)
    ws_closed_early: list[Record] = field(default_factory=list)    # closed by the other side, session alive
    ws_after_end: list[float] = field(default_factory=list)        # seconds from sign-out to the proxy's close
    ws_left_open: int = 0
    # Left open after a sign-out that the proxy itself answered with a 5xx (Redis down: it could not end
    # the session on the server, and says so): the session did not end, so neither must the socket.
    ws_open_after_failed_sign_out: int = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, record: Record) -> Record:
        self.records.append(record)
        return record


def _outcome_for(resp: aiohttp.ClientResponse) -> str:
    if resp.status == 401:
        return "session_lost"
    if resp.status in (302, 303, 307) and any(p in resp.headers.get("Location", "") for p in LOGIN_PATHS):
        return "session_lost"
    return "ok" if resp.status == 200 else f"status:{resp.status}"


class User:
    def __init__(self, load: Load, number: int, rng: random.Random) -> None:
        self.load = load
        self.number = number
        self.rng = rng
        self.name = f"soak-{number}-{os.getpid()}"
        self.client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=REQUEST_TIMEOUT)
        self.signed_in = False
        self.ws_task: asyncio.Task[None] | None = None
        self.signed_out_at: float | None = None
        self.lock = asyncio.Lock()          # one thing at a time: the user's own loop, or the soak's sign-out

    async def close(self) -> None:
        if self.ws_task is not None:
            self.ws_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ws_task
        await self.client.close()

    def _upstream(self) -> tuple[str, str]:
        return ("unix", "/u") if self.rng.random() < 0.5 else ("tcp", "")

    async def _timed(self, kind: str, upstream: str, coro: Any) -> Record:
        start = self.load.now()
        try:
            outcome, detail = await coro
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome, detail = f"error:{type(exc).__name__}", str(exc)[:200]
        record = self.load.add(Record(start, self.load.now(), self.number, kind, upstream, outcome, detail))
        if outcome == "session_lost":
            self.signed_in = False
        return record

    # -- signing in and out ----------------------------------------------------------------------------------

    async def login(self) -> bool:
        async def go() -> tuple[str, str]:
            result = await login_via_http(self.client, self.load.url + "/api/after-login", username=self.name)
            if result.status == 200 and '"token": true' in result.body_text:
                return "ok", ""
            if result.status != 200:                  # e.g. the app's 502 when it is down, the store's 503
                return f"status:{result.status}", result.url
            return "login_failed", f"{result.status} at {result.url}"
        record = await self._timed("login", "tcp", go())       # it ends on the app's page
        self.signed_in = record.outcome == "ok"
        if self.signed_in:
            self.signed_out_at = None
        return self.signed_in

    async def relogin(self) -> None:
        """Sign out (which must close this user's WebSocket within WS_CLOSE_LIMIT) and sign in again."""
        async def go() -> tuple[str, str]:
            result = await logout_via_http(self.client, self.load.url + "/oauth2/sign_out")
            return ("ok", "") if result.status == 200 else (f"status:{result.status}", result.url)
        self.signed_out_at = self.load.now()
        logout = await self._timed("logout", "", go())
        self.signed_in = False
        if self.ws_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.ws_task), WS_CLOSE_LIMIT)
            except TimeoutError:
                if logout.outcome.startswith("status:5"):
                    self.load.ws_open_after_failed_sign_out += 1
                else:
                    self.load.ws_left_open += 1
                self.ws_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.ws_task
            self.ws_task = None
        self.client.cookie_jar.clear()

    # -- what a signed-in user does --------------------------------------------------------------------------

    async def act(self) -> None:
        kind = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        upstream, prefix = self._upstream()
        base = self.load.url + prefix
        if kind == "relogin":
            await self.relogin()
        elif kind == "ws":
            if self.ws_task is None or self.ws_task.done():
                self.ws_task = asyncio.create_task(self._websocket(upstream, base))
        elif kind == "page":
            await self._timed(kind, upstream, self._get(base + "/page", HTML, expect=None))
        elif kind == "api":
            await self._timed(kind, upstream, self._get(base + f"/api/{self.rng.randrange(1000)}", JSON,
                                                        expect=None))
        elif kind == "download":
            await self._timed(kind, upstream, self._get(base + f"/download?n={DOWNLOAD_BYTES}", JSON,
                                                        expect=DOWNLOAD_BYTES))
        elif kind == "upload":
            await self._timed(kind, upstream, self._upload(base + "/upload"))
        elif kind == "sse":
            await self._timed(kind, upstream, self._sse(base + f"/sse?n={SSE_EVENTS}&every={SSE_EVERY}"))

    async def _get(self, url: str, headers: dict[str, str], expect: int | None) -> tuple[str, str]:
        async with self.client.get(url, headers=headers, allow_redirects=False) as resp:
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
            outcome = _outcome_for(resp)
            if outcome == "ok" and expect is not None and size != expect:
                return "short", f"{size} of {expect} bytes"
            return outcome, ""

    async def _upload(self, url: str) -> tuple[str, str]:
        body = os.urandom(1024) * (UPLOAD_BYTES // 1024)
        async with self.client.post(url, data=body, headers={**JSON, "Content-Type": "application/octet-stream"},
                                    allow_redirects=False) as resp:
            outcome = _outcome_for(resp)
            if outcome == "ok" and (await resp.json()).get("size") != UPLOAD_BYTES:
                return "short", "the app saw another size"
            return outcome, ""

    async def _sse(self, url: str) -> tuple[str, str]:
        async with self.client.get(url, headers={"Accept": "text/event-stream"}, allow_redirects=False) as resp:
            outcome = _outcome_for(resp)
            if outcome != "ok":
                return outcome, ""
            events = 0
            async for line in resp.content:
                if line.startswith(b"data:"):
                    events += 1
            return ("ok", "") if events == SSE_EVENTS else ("short", f"{events} of {SSE_EVENTS} events")

    async def _websocket(self, upstream: str, base: str) -> None:
        """Open, talk every WS_EVERY seconds for a while, close. A close by the other side is recorded: after
        this user's sign-out it is what must happen (how long it took is kept); before, it is a stream cut."""
        start = self.load.now()
        life = min(self.rng.uniform(*WS_LIFE), max(1.0, self.load.end - start - 1))
        try:
            ws = await self.client.ws_connect(base.replace("http://", "ws://") + "/ws", autoping=True,
                                              heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except aiohttp.WSServerHandshakeError as exc:
            outcome = "session_lost" if exc.status == 401 else f"status:{exc.status}"
            self.load.add(Record(start, self.load.now(), self.number, "ws", upstream, outcome))
            if outcome == "session_lost" and self.signed_out_at is None:
                self.signed_in = False
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.load.add(Record(start, self.load.now(), self.number, "ws", upstream, f"error:{type(exc).__name__}"))
            return
        outcome, detail = "ok", ""
        try:
            sent = 0
            while self.load.now() - start < life:
                sent += 1
                await ws.send_str(f"hello {sent}")
                msg = await ws.receive(timeout=15)
                if msg.type is not aiohttp.WSMsgType.TEXT or msg.data != f"hello {sent}":
                    outcome, detail = "closed", f"{msg.type.name} {msg.data!r} {msg.extra!r}"
                    break
                await asyncio.sleep(WS_EVERY)
        except (aiohttp.ClientError, TimeoutError, OSError, ConnectionError) as exc:
            outcome, detail = "closed", f"{type(exc).__name__}"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        record = self.load.add(Record(start, self.load.now(), self.number, "ws", upstream, outcome, detail))
        if outcome == "closed":
            if self.signed_out_at is not None:
                record.outcome = "closed_after_sign_out"
                self.load.ws_after_end.append(record.end - self.signed_out_at)
            else:
                self.load.ws_closed_early.append(record)

    async def sign_out_now(self) -> None:
        """Sign out between two of this user's own actions (the soak's ``sign_outs``)."""
        async with self.lock:
            if self.signed_in:
                await self.relogin()

    async def run(self) -> None:
        while self.load.now() < self.load.end:
            async with self.lock:
                signed_in = self.signed_in or await self.login()
                if signed_in:
                    await self.act()
            await asyncio.sleep(self.rng.uniform(*THINK) if signed_in else 1.0)


async def hostile_burst(load: Load, count: int, rng: random.Random) -> None:
    """``count`` requests nobody signed in would send: junk and forged cookies, forged bearer tokens, a
    truncated sealed cookie, a request head over the proxy's limit. Each must get a 4xx or a redirect."""
    import base64
    import json
    forged = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=") for part in
                      ({"alg": "none", "typ": "JWT"}, {"sub": "admin", "exp": 4102444800})) + ".sig"
    shapes: list[dict[str, str]] = [
        {"Cookie": "_authproxy=" + "A" * 300},
        {"Cookie": "_authproxy=v1." + base64.urlsafe_b64encode(os.urandom(200)).decode()},
        {"Authorization": f"Bearer {forged}", **JSON},
        {"Cookie": f"_authproxy={forged}", **JSON},
        {"Cookie": "_authproxy_0=x; _authproxy_1=y; _authproxy_7=z", **HTML},
        {"X-Huge": "h" * (100 * 1024)},
    ]
    sem = asyncio.Semaphore(8)

    async def one(i: int, client: aiohttp.ClientSession) -> None:
        headers = shapes[i % len(shapes)]
        async with sem:
            start = load.now()
            try:
                async with client.get(load.url + rng.choice(["/", "/api/x", "/u/page", "/ws"]), headers=headers,
                                      allow_redirects=False) as resp:
                    await resp.read()
                    outcome = f"status:{resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                outcome = f"error:{type(exc).__name__}"
            load.add(Record(start, load.now(), -1, "hostile", "", outcome, ",".join(headers)))

    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT, max_field_size=1 << 20,
                                     max_line_size=1 << 20) as client:
        await asyncio.gather(*(one(i, client) for i in range(count)))
