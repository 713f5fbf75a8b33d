"""A plain-HTTP "user" that logs in (and out) through oidc-provider's dev interactions, without a browser.

It follows redirects by hand, as a browser would, and answers the provider's pages with the POSTs their forms
would send:

- the login form (`/interaction/<uid>`, hidden `prompt=login`): fields `login` and `password`; oidc-provider's
  devInteractions accept any pair and the login becomes the account's `sub`;
- the consent form (same path, hidden `prompt=consent`): no fields but the hidden one;
- for `logout_via_http`, the RP-initiated logout confirmation (`/session/end`, a form `op.logoutForm` with a
  hidden `xsrf`, confirmed by `logout=yes`; OIDC RP-Initiated Logout 1.0 §2), which the provider also sends
  as an auto-submitting page when nobody is logged in.

The caller's session must have `aiohttp.CookieJar(unsafe=True)`: the default jar ignores cookies for IP
addresses, and every server here is on 127.0.0.1. Cookies ignore ports, so the proxy's and the provider's
cookies share that jar and are both sent to each (the provider's are named `op_*` to avoid clashes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import aiohttp

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A login is a handful of hops; more means a redirect loop.
MAX_HOPS = 30
INTERACTION_PATH_PREFIX = "/interaction/"
END_SESSION_PATHS = frozenset({"/session/end", "/session/end/confirm"})


@dataclass
class LoginResult:
    """The first response that was neither a redirect nor a provider page, its body, and every URL requested."""

    response: aiohttp.ClientResponse
    body_text: str
    visited: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def url(self) -> str:
        return str(self.response.url)


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str]


class _FormParser(HTMLParser):
    """The forms of a page with their named inputs (buttons excepted: their value is the caller's choice)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._current: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = _Form(attr.get("action", ""), attr.get("method", "get").lower(), {})
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and attr.get("name"):
            self._current.fields[attr["name"]] = attr.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _forms(html: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def _provider_form(url: str, html: str, username: str, password: str, logout: bool) -> _Form | None:
    """The filled form to submit if this page is one the user must answer, else None."""
    path = urlsplit(url).path
    for form in _forms(html):
        if path.startswith(INTERACTION_PATH_PREFIX) and form.method == "post":
            prompt = form.fields.get("prompt")
            if prompt == "login":
                return _Form(form.action, "post", {**form.fields, "login": username, "password": password})
            if prompt == "consent":
                return form
        if logout and path in END_SESSION_PATHS and form.method == "post" and "xsrf" in form.fields:
            return _Form(form.action, "post", {**form.fields, "logout": "yes"})
    return None


async def _drive(
    session: aiohttp.ClientSession, start_url: str, *, username: str, password: str, logout: bool,
    stop_at: str | None = None,
) -> LoginResult:
    visited: list[str] = []
    url, method, data = start_url, "GET", None
    headers = {"Accept": "text/html"}
    for _ in range(MAX_HOPS):
        visited.append(url)
        async with session.request(method, url, data=data, headers=headers, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            if resp.status in REDIRECT_STATUSES and location:
                # RFC 9110 §15.4: 307/308 repeat the request; the others become a GET.
                if resp.status not in (307, 308):
                    method, data = "GET", None
                url = urljoin(url, location)
                if stop_at is not None and urlsplit(url).path == stop_at:
                    visited.append(url)             # where the browser would go next, not requested
                    return LoginResult(resp, "", visited)
                continue
            body = await resp.text()
        form = _provider_form(url, body, username, password, logout)
        if form is None:
            return LoginResult(resp, body, visited)
        url, method, data = urljoin(url, form.action), "POST", form.fields
    raise RuntimeError(f"no final page after {MAX_HOPS} requests: {visited}")


async def login_via_http(
    session: aiohttp.ClientSession, start_url: str, *, username: str = "alice", password: str = "pw"
) -> LoginResult:
    """GET `start_url` as a browser (Accept: text/html), sign in as `username` and consent on the way.

    Returns the first page that is not a redirect and not a provider interaction page: typically the proxied
    app's page after the callback, or an error page. The session needs `CookieJar(unsafe=True)` (see module).
    """
    return await _drive(session, start_url, username=username, password=password, logout=False)


async def logout_via_http(session: aiohttp.ClientSession, start_url: str) -> LoginResult:
    """GET `start_url` (e.g. the proxy's sign-out URL) and confirm the provider's logout prompt on the way."""
    return await _drive(session, start_url, username="", password="", logout=True)


async def authorization_response_via_http(
    session: aiohttp.ClientSession, start_url: str, *, username: str = "alice", password: str = "pw",
    callback_path: str = "/oauth2/callback",
) -> str:
    """Like `login_via_http`, but stop where the provider sends the browser back: the callback URL (with
    `code` and `state`) is returned, not requested, so a test decides when, where and how it arrives."""
    result = await _drive(session, start_url, username=username, password=password, logout=False,
                          stop_at=callback_path)
    if urlsplit(result.visited[-1]).path != callback_path:
        raise RuntimeError(f"the provider never sent the browser back to {callback_path}: {result.visited}")
    return result.visited[-1]
