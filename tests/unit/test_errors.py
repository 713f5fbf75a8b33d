"""The exception tree: one tree, drawn truthfully in ``errors.py``'s docstring, each class with its answer.

The answers are the boundary's (``boundary.py``); here each class of the tree is raised by a handler of a
small app behind the real middleware, so a class added to the tree without a decided answer shows up.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from aiohttp import web

from proxy import errors
from proxy.bearer import invalid_token_header
from proxy.boundary import error_boundary, stamp_response
from proxy.context import CONFIG
from proxy.errors import AuthProxyError
from proxy.metrics import Metrics
from proxy.session import Identity
from tests.unit.conftest import make_config

PACKAGE = Path(errors.__file__).parent
TREE = {name: cls for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__}

# Exception classes that live outside errors.py, each for a reason; anything else belongs in the tree.
ELSEWHERE = {
    # the lean HTTP/1.1 client, the relay and splice: control flow of the upstream half, caught there and
    # turned into UpstreamError before anything reaches the boundary (inside the upstream subpackage)
    "upstream/http1.py": {"Http1Error", "Http1HeadTooLarge", "Http1Timeout"},
    "upstream/relay.py": {"ClientGone"},
    "upstream/splice.py": {"SourceBroke", "DestinationGone"},
    # config plumbing: pydantic's and PyYAML's own error types, turned into ConfigError problems
    "config/base.py": {"_CrossFieldProblems"},
    "config/loading.py": {"_DuplicateKey"},
}


def test_every_error_class_is_an_authproxy_error():
    assert len(TREE) >= 20
    assert [name for name, cls in TREE.items() if not issubclass(cls, AuthProxyError)] == []


def test_no_module_defines_an_exception_class_outside_the_tree():
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(re.search(r"(Exception|Error)$", ast.unparse(base))
                                                      for base in node.bases):
                found.setdefault(name, set()).add(node.name)
    stray = {name: classes - ELSEWHERE.get(name, set()) for name, classes in found.items()}
    assert {name: classes for name, classes in stray.items() if classes} == {}


def _drawn_tree() -> dict[str, str]:
    """Each class of the docstring's drawing → the class it is drawn under."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w+)\s{2,}", line)
        if not match:
            continue
        depth = len(match[1]) // 4 + (1 if "──" in line else 0)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[match[2]] = stack[-1][1]
        stack.append((depth, match[2]))
    return parents


def test_the_docstring_draws_every_class_under_its_real_base():
    drawn = _drawn_tree()
    assert set(drawn) | {"AuthProxyError"} == set(TREE) - {"Problem"}
    assert {name: TREE[name].__mro__[1].__name__ for name in drawn} == drawn


# -- each class's answer ---------------------------------------------------------------------------

IDENT = Identity(sub="alice", email="a@x.test")
# An instance of every class of the tree, and what an API client (Accept: application/json) gets for it:
# its status and the JSON "error". A failure names its class; a refusal has a code of its own.
ANSWERS: list[tuple[AuthProxyError, int, str]] = [
    (errors.AuthProxyError("boom"), 500, "AuthProxyError"),
    (errors.ConfigError("<unit>", [errors.Problem("a", "b")]), 500, "ConfigError"),
    (errors.CookieError("bad"), 401, "CookieError"),
    (errors.SessionWasEnded("ended"), 401, "SessionWasEnded"),
    (errors.SessionEnded("invalid_grant"), 401, "SessionEnded"),
    (errors.StoreUnavailable("down"), 503, "StoreUnavailable"),
    (errors.BadRequest("nul"), 400, "BadRequest"),
    (errors.BadQueryRules("unknown parameter"), 400, "BadQueryRules"),
    (errors.SessionTooLarge(9000, 9), 413, "SessionTooLarge"),
    (errors.LoginError("no"), 400, "LoginError"),
    (errors.StateMismatch("state"), 403, "StateMismatch"),
    (errors.AuthorizationDenied("access_denied"), 403, "AuthorizationDenied"),
    (errors.AccountRefused("hd_missing", "This is a personal Google account."), 403, "AccountRefused"),
    (errors.ProviderError("token", "HTTP 500"), 502, "ProviderError"),
    (errors.ProviderUnavailable("refresh", "down"), 503, "ProviderUnavailable"),
    (errors.TokenRejected("refresh", "invalid_grant"), 502, "TokenRejected"),
    (errors.TokenValidationError("iss", "wrong issuer"), 502, "TokenValidationError"),
    (errors.BearerRejected("exp", "expired"), 401, "invalid_token"),
    (errors.Refusal("no"), 500, "Refusal"),           # a refusal without an answer of its own: a failure
    (errors.NotFound("nothing"), 404, ""),            # always a page
    (errors.Unauthenticated("/x"), 401, "unauthenticated"),
    (errors.Forbidden(IDENT, "/x"), 403, "forbidden"),
    (errors.StepUpRequired({"acr_values": "urn:gold"}, "no acr", bearer=True), 401, "insufficient_user_authentication"),
    (errors.StepUpRefused("acr"), 403, ""),           # at the callback: always a page
    (errors.WebSocketRefused(429, "too_many_websockets", "Too many", "close some"), 429, "too_many_websockets"),
    (errors.LogoutTokenRejected("the logout token was already used"), 400, "invalid_request"),
    (errors.UpstreamError("refused"), 502, "UpstreamError"),
    (errors.UpstreamTimeout("slow"), 504, "UpstreamTimeout"),
    (errors.FrameError("junk"), 500, "FrameError"),
]


def test_every_class_has_its_answer_listed():
    assert {type(exc).__name__ for exc, _, _ in ANSWERS} == set(TREE) - {"Problem"}


def _raising_app(exc: Exception) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    config = make_config()
    app = web.Application(middlewares=[error_boundary(config, Metrics())])
    app[CONFIG] = config                 # login_url, for the 401's link
    app.on_response_prepare.append(stamp_response)
    app.router.add_get("/x", handler)
    app.router.add_get("/oauth2/auth", handler)
    return app


@pytest.mark.parametrize(("exc", "status", "code"), ANSWERS, ids=lambda v: type(v).__name__ if isinstance(v, Exception)
                         else None)
async def test_each_class_gets_its_status_and_error_code(aiohttp_client, exc, status, code):
    client = await aiohttp_client(_raising_app(exc))
    response = await client.get("/x", headers={"Accept": "application/json"})
    assert response.status == status
    assert response.headers["X-Request-Id"]
    if code:
        assert response.content_type == "application/json"
        assert (await response.json())["error"] == code
    else:
        assert response.content_type == "text/html"


@pytest.mark.parametrize(("exc", "status", "header"), [
    (errors.Unauthenticated(), 401, "Bearer"),
    (errors.BearerRejected("exp", "expired"), 401, invalid_token_header()),
    (errors.Forbidden(IDENT), 403, None),
    # nginx's form: 403, as a 401 would be handed to its error_page location, authproxy as the proxy
    (errors.StepUpRequired({"acr_values": "urn:gold urn:silver", "max_age": "300", "prompt": "login"}, "no acr"), 403,
     'Bearer realm="authproxy", error="insufficient_user_authentication", error_description="A stronger or more '
     'recent sign-in is required", acr_values="urn:gold urn:silver", max_age=300'),
    (errors.BadQueryRules("unknown parameter 'x'"), 400, None),
])
async def test_the_forward_auth_endpoint_gets_bare_statuses(aiohttp_client, exc, status, header):
    client = await aiohttp_client(_raising_app(exc))
    response = await client.get("/oauth2/auth", headers={"Accept": "application/json"})
    assert response.status == status
    assert response.content_type != "application/json"
    if header is not None:
        assert response.headers["WWW-Authenticate"] == header
    if isinstance(exc, errors.BadQueryRules):
        assert await response.text() == "/oauth2/auth: unknown parameter 'x'\n"
    else:
        assert await response.read() == b""
