"""Login and redirect flows as chromium really runs them: long deep links, redirect targets, two tabs.

What plain HTTP cannot show here is the browser's own rules: chromium silently drops a cookie whose name
and value exceed 4096 bytes, resolves a ``Location`` with its own URL parser (GURL), and keeps one cookie
jar for every tab.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, Request
from playwright.async_api import Error as PlaywrightError

from proxy.redirects import MAX_REDIRECT_LENGTH, safe_redirect
from tests.e2e.test_browser_login import _on_login_form, echo_page, sign_in
from tests.integration.test_hostile_browser import REDIRECT_PAYLOADS, expand, origin_of
from tests.support.echo import header_values
from tests.support.ports import free_port
from tests.unit.conftest import make_config
from tests.unit.test_redirects import SAFE, UNSAFE

pytestmark = pytest.mark.e2e

# The brief's own list, besides the unit and hostile-browser payloads: on public_url's host, another
# port, another scheme, encodings, and a look-alike of the host.
BRIEF_PAYLOADS = [
    "//evil", "/\\evil", "\\/evil", "/%5Cevil", "/%09/evil", "https:evil", "javascript:alert(1)",
    "data:text/html,x", "/\t/evil", "/\r/evil", "/\n/evil", "https://public@evil", "%2F%2Fevil",
    "http:/evil", "http:\\\\evil", "/%2e%2e/%2e%2e//evil", "/..//evil", "/.//evil", "ht\ttp://evil/",
    "/x?next=//evil", "/x#//evil", "https://xn--pp-8cd.example.com/",
    # public_url's host on another scheme or port, spelled other ways, with userinfo
    "{origin}/x", "{origin}//evil/", "{origin}\t/x", "HTTP://{host}/x", "https://{host}/x", "ws://{host}/x",
    "ftp://{host}/x", "http://127.0.0.1:1/x", "http://{host}./x", "http:{host}/x", "http:/{host}/x",
    "{origin}@evil/", "http://evil@{host}/x", "http://{host}%2F@evil/", "http://{host}%40evil/",
    "{origin}%2F%2Fevil", "{origin}/%2F%2Fevil", "{origin}?//evil",
    # non-ASCII, which safe_redirect percent-encodes as chromium does
    "/wiki/Caf\u00e9?q=\u00fc", "{origin}/\u00e9", "/\uff0f\uff0fevil", "/\u2215\u2215evil", "//evil\u3002example",
]


async def sign_in_if_asked(page: Page, issuer: str, username: str = "alice") -> None:
    """Answer the provider's forms if it shows any: with a provider session it asks only for consent."""
    if not _on_login_form(page, issuer):
        return
    if await page.locator("input[name=login]").count():
        await sign_in(page, issuer, username)
        return
    await page.get_by_role("button", name="Continue").click()          # consent only: the login is remembered
    await page.wait_for_url(lambda url: not url.startswith(issuer))


async def drop_proxy_cookies(context: BrowserContext) -> None:
    await context.clear_cookies(name=re.compile(r"^_authproxy"))


async def test_a_deep_link_too_long_for_the_login_cookie_still_signs_in(stack, context, page):
    """A target longer than MAX_REDIRECT_LENGTH would make the login cookie exceed 4096 bytes, which
    chromium drops without a word: the callback then finds no login and the sign-in can never complete.
    It falls back to the start page instead; a target within the limit comes back exactly."""
    too_long = stack.url + "/html/long?q=" + "a" * 2600
    await page.goto(too_long)
    await sign_in_if_asked(page, stack.idp.issuer)
    assert page.url == stack.url + "/", page.url
    record = json.loads(await page.locator("body").inner_text())       # the echo answers "/" in JSON
    assert record["path"] == "/" and header_values(record, "X-Forwarded-User") == ["alice"]

    await drop_proxy_cookies(context)
    longest = stack.url + "/html/long?q="
    longest += "b" * (MAX_REDIRECT_LENGTH - len(longest))
    await page.goto(longest)
    await sign_in_if_asked(page, stack.idp.issuer)
    assert page.url == longest
    assert await echo_page(page) == ("alice", longest.removeprefix(stack.url))


# -- where chromium goes with each Location ------------------------------------------------------------------


class LocationServer:
    """Answers ``GET /go/<n>`` with a 302 whose ``Location`` is ``locations[n]``, written byte for byte (no
    HTTP library in between to refuse or clean it), and every other request with 200: the page landed on."""

    def __init__(self) -> None:
        self.locations: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            if re.fullmatch(r"/go/\d+", target):
                location = self.locations[int(target.removeprefix("/go/"))].encode("utf-8")
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + location +
                             b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
                             b"Connection: close\r\n\r\nlanded")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def location_server() -> AsyncIterator[LocationServer]:
    server = LocationServer()
    await server.start()
    yield server
    await server.close()


class Follower:
    """Where chromium's network stack goes with a given ``Location``: the URL of the request it makes next, or
    None when it makes none (it refuses to redirect to javascript:, data:, an invalid URL...)."""

    def __init__(self, page: Page, server: LocationServer) -> None:
        self.page, self.server = page, server
        self.requested: list[str] = []
        self.seen: dict[str, str | None] = {}

    async def install(self) -> None:
        # Every hop of a redirect chain is a navigation "request" event (a late favicon fetch is not); names
        # other than 127.0.0.1 do not resolve (the browser fixture's host-resolver rule), so an off-origin
        # hop is seen but goes nowhere.
        def record(request: Request) -> None:
            if request.is_navigation_request():
                self.requested.append(request.url)
        self.page.on("request", record)

    async def where(self, location: str) -> str | None:
        if location not in self.seen:
            self.seen[location] = await self._follow(location)
        return self.seen[location]

    async def _follow(self, location: str) -> str | None:
        self.server.locations.append(location)
        start = f"{self.server.origin}/go/{len(self.server.locations) - 1}"
        self.requested.clear()
        try:
            await self.page.goto(start, wait_until="commit")
        except PlaywrightError:
            pass                            # blocked off-origin, or a redirect chromium refused
        assert self.requested[:1] == [start], self.requested
        return self.requested[1] if len(self.requested) > 1 else None


def _is_header_safe(payload: str) -> bool:
    """Whether the payload can be written into a Location header at all (CR, LF, NUL would end or break it)."""
    return not any(ch in payload for ch in "\r\n\x00")


FALLBACK = "/fallback-marker"


async def _check_against_chromium(follower: Follower, payloads: list[str], origin: str) -> dict[str, str]:
    """Each payload P through ``safe_redirect``: our answer must land on ``origin`` in chromium and, if P
    was accepted, where chromium goes with our answer must be where it would go with P itself."""
    config = make_config(public_url=origin)
    failures: dict[str, str] = {}
    for payload in payloads:
        ours = safe_redirect(payload, config, default=FALLBACK)
        landed = await follower.where(ours)
        if landed is None or origin_of(landed) != origin:
            failures[payload] = f"our answer {ours!r} took chromium to {landed!r}"
        elif ours != origin + FALLBACK and _is_header_safe(payload):
            raw = await follower.where(payload)
            if raw != landed:
                failures[payload] = f"accepted as {ours!r}, but chromium reads it as {raw!r}"
    return failures


async def test_safe_redirect_agrees_with_chromium_on_every_payload(location_server, page):
    """The payload lists of the unit and hostile-browser tests, and the brief's, written raw into a Location
    header: many take chromium off the origin. ``safe_redirect`` must refuse exactly those (and everything
    it cannot vouch for), and whatever it keeps must mean to chromium what it means to us."""
    origin = location_server.origin
    follower = Follower(page, location_server)
    await follower.install()
    payloads = list(dict.fromkeys(
        [expand(p, origin) for p in REDIRECT_PAYLOADS + BRIEF_PAYLOADS] +
        [p.replace("https://app.example.com", origin).replace("app.example.com", urlsplit(origin).netloc)
         for p in UNSAFE + [t for t, _ in SAFE]]))
    off_origin = []
    for payload in payloads:
        if _is_header_safe(payload):
            raw = await follower.where(payload)
            if raw is not None and origin_of(raw) != origin:
                off_origin.append(payload)
    assert len(off_origin) >= 25, off_origin          # the lists are real attacks on a naive redirect
    assert await _check_against_chromium(follower, payloads, origin) == {}


async def test_safe_redirect_agrees_with_chromium_on_fuzzed_targets(location_server, page):
    """Random targets built from the pieces URL parsers disagree on (slashes, backslashes, tabs, encodings,
    "@", ":", dots, hosts): the same two promises as above, on 300 of them."""
    origin = location_server.origin
    follower = Follower(page, location_server)
    await follower.install()
    rng = random.Random(13)
    pieces = ["/", "//", "\\", "%2F", "%2f", "%5C", "%09", "\t", " ", "@", ":", ".", "..", "%2e", "#", "?", "%",
              "evil.example", urlsplit(origin).netloc, "127.0.0.1", "http:", "https:", origin, "a", "%0a", "\u2215"]
    starts = ["", "/", "/a/", origin, origin + "/"]          # most targets start like a real one, then go wrong
    payloads = list(dict.fromkeys(rng.choice(starts) + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
                                  for _ in range(300)))
    accepted = [p for p in payloads if safe_redirect(p, make_config(public_url=origin), default=FALLBACK)
                != origin + FALLBACK]
    assert len(accepted) >= 40, len(accepted)         # enough kept targets for the comparison to mean something
    assert await _check_against_chromium(follower, payloads, origin) == {}


# -- the page at the redirect URI ------------------------------------------------------------------------------


async def test_code_and_state_do_not_reach_the_app_in_referer(stack_factory, context, page):
    """With ``cookie.samesite: strict`` the callback answers a page that moves on by itself; chromium sends
    the URL of that page — ``/oauth2/callback?code=…&state=…`` — as the next request's ``Referer`` to the app,
    into its logs. RFC 9700 §4.2.4: the redirect endpoint's pages suppress the Referer."""
    stack = await stack_factory(cookie={"samesite": "strict"})
    await page.goto(stack.url + "/html/after-login")
    await sign_in(page, stack.idp.issuer)
    await page.wait_for_url(stack.url + "/html/after-login")
    assert await echo_page(page) == ("alice", "/html/after-login")
    referers = [value for record in stack.echo.seen for value in header_values(record, "Referer")]
    assert not [r for r in referers if "code=" in r or "state=" in r or "/oauth2/callback" in r], referers


# -- two tabs ----------------------------------------------------------------------------------------------------


async def test_two_tabs_sign_in_at_once_and_each_lands_on_its_own_page(stack, context, page):
    """Two tabs of one browser hit protected pages before either has signed in: two logins in flight, two
    login cookies in chromium's one jar. Each tab finishes at the provider and lands on its own page."""
    other = await context.new_page()
    await page.goto(stack.url + "/html/tab-a?n=1")
    await other.goto(stack.url + "/html/tab-b")
    assert _on_login_form(page, stack.idp.issuer) and _on_login_form(other, stack.idp.issuer)
    logins = [c["name"] for c in await context.cookies(stack.url) if c["name"].startswith("_authproxy_login_")]
    assert len(logins) == 2

    await sign_in(page, stack.idp.issuer, "alice")
    assert page.url == stack.url + "/html/tab-a?n=1"
    await sign_in_if_asked(other, stack.idp.issuer, "alice")
    assert other.url == stack.url + "/html/tab-b"
    assert await echo_page(page) == ("alice", "/html/tab-a?n=1")
    assert await echo_page(other) == ("alice", "/html/tab-b")
    assert not [c for c in await context.cookies(stack.url) if c["name"].startswith("_authproxy_login_")]


# -- another origin reading who the user is -------------------------------------------------------------------


HOSTILE_PAGE = "<!doctype html><title>hostile</title><p>nothing to see"


@pytest.fixture
async def other_origins() -> AsyncIterator[tuple[str, str]]:
    """Two pages on other origins of the same host: (hostile, allowed). Another port is cross-origin but
    same-site, so chromium sends the proxy's SameSite=Lax cookies with their credentialed requests — the
    strongest position a hostile page could have."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=HOSTILE_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    ports = free_port(), free_port()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    await runner.cleanup()


READ = """async url => {
    try {
        const r = await fetch(url, {credentials: "include"});
        return "read " + r.status + " " + (await r.text()).slice(0, 200);
    } catch (e) { return "refused: " + e.name; }
}"""


async def test_another_origin_cannot_read_the_users_identity(stack_factory, other_origins, context, page):
    """A signed-in user visits a hostile page — one on another origin, and an ``Origin: null`` one (a data:
    URL, as sandboxed frames have). Its credentialed fetches of /oauth2/userinfo, /oauth2/auth and proxied
    pages carry the user's cookie, but chromium lets it read none of the answers. The origin the operator
    allowed (cors.allowed_origins) can read the gate's 401, which is what it is for."""
    hostile, allowed = other_origins
    stack = await stack_factory(cors={"allowed_origins": [allowed], "allow_credentials": True})
    await page.goto(stack.url + "/html/home")
    await sign_in(page, stack.idp.issuer)
    assert (await echo_page(page))[0] == "alice"
    targets = [stack.url + p for p in ("/oauth2/userinfo", "/oauth2/auth", "/api/data", "/html/home")]

    await page.goto(hostile + "/")
    seen = len(stack.echo.seen)
    assert [await page.evaluate(READ, url) for url in targets] == ["refused: TypeError"] * len(targets)
    # The cookies went along (the app answered as alice), so only CORS stood in the way.
    assert [header_values(r, "X-Forwarded-User") for r in stack.echo.seen[seen:]] == [["alice"]] * 2
    await page.goto("data:text/html,<title>null origin</title>")
    assert [await page.evaluate(READ, url) for url in targets] == ["refused: TypeError"] * len(targets)

    await page.goto(allowed + "/")
    answer = await page.evaluate(READ.replace('"include"', '"omit"'), stack.url + "/api/data")
    assert answer.startswith("read 401 ") and "login_url" in answer, answer
