"""The Session value (what it prints) and the request path around it."""

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.cookies import CookieCodec
from proxy.crypto import Sealer
from proxy.ending import ENDS, LocalFanout, Reason, SessionEnds
from proxy.errors import StoreUnavailable
from proxy.session import (
    CODEC,
    STORE,
    commit_session,
    defer_cookie,
    get_session,
    session_state,
    set_session,
    write_session_cookie,
)
from proxy.store import CookieStore, MemoryDenylist
from tests.unit.conftest import make_config, make_session


def test_repr_hides_tokens():
    text = repr(make_session())
    assert "AT-secret" not in text and "RT-secret" not in text and "access_token=yes" in text


# -- the request path: lazy loading, and no write-back of an ended session ---------------------------


class CountingStore(CookieStore):
    def __init__(self, codec: CookieCodec, down: bool = False) -> None:
        super().__init__(codec, MemoryDenylist())
        self.loads = 0
        self.down = down

    async def load(self, cookies):
        self.loads += 1
        if self.down:
            raise StoreUnavailable("Redis could not be reached (ConnectionError).")
        return await super().load(cookies)


def app_with(down: bool = False) -> tuple[web.Application, CountingStore]:
    cfg = make_config(cookie={"name": "_authproxy"}).cookie
    codec = CookieCodec(cfg, Sealer(cfg.keys))
    app = web.Application()
    app[CODEC] = codec
    app[STORE] = store = CountingStore(codec, down)
    app[ENDS] = SessionEnds(store, MemoryDenylist(), LocalFanout(), ttl=cfg.expire)
    return app, store


def request_with(app: web.Application, cookies: list[tuple[str, str]]):
    header = "; ".join(f"{k}={v}" for k, v in cookies)
    return make_mocked_request("GET", "/", headers=CIMultiDict({"Cookie": header}), app=app)


async def test_the_session_is_loaded_only_when_asked_for():
    app, store = app_with(down=True)
    request = request_with(app, [("_authproxy", "1.whatever")])
    state = session_state(request)
    assert state.present == ["_authproxy"] and store.loads == 0 and state.peek() is None
    with pytest.raises(StoreUnavailable):               # what needs the session gets the 503 ...
        await get_session(request)
    response = web.Response()
    await write_session_cookie(request, response)       # ... and the response leaves the cookie alone
    assert "Set-Cookie" not in response.headers


async def test_a_session_ended_while_the_request_was_in_flight_is_cleared_not_written():
    app, store = app_with()
    session = make_session(id="s1", created_at=time.time())
    request = request_with(app, store.codec.dump(session))
    assert await get_session(request) == session
    set_session(request, session.with_tokens(access_token="AT-refreshed"))   # a refresh ...
    ends = app[ENDS]
    await ends.end(ends.new(Reason.SIGN_OUT, session_id="s1"))              # ... then the user signs out
    response = web.Response()
    await write_session_cookie(request, response)
    cookies = response.headers.getall("Set-Cookie")
    assert cookies and all("Max-Age=0" in c for c in cookies)


async def test_a_session_grown_past_the_cookie_limit_ends_and_is_cleared():
    app, store = app_with()
    session = make_session(id="s1", created_at=time.time())
    request = request_with(app, store.codec.dump(session))
    await get_session(request)
    set_session(request, session.with_tokens(access_token="A" * 40_000))    # a refresh brought a huge token
    response = web.Response()
    await write_session_cookie(request, response)
    cookies = response.headers.getall("Set-Cookie")
    assert cookies and all("Max-Age=0" in c for c in cookies)
    assert app[ENDS].ended(session)                                          # copies of the old cookie too
    assert await store.denylist.ended(session)


# -- loading: lazy, once, and a bad cookie is a signed-out user ------------------------------------------


async def test_no_cookie_of_ours_is_no_session_and_no_store_call():
    app, store = app_with()
    request = request_with(app, [("other", "x")])
    assert await get_session(request) is None
    assert store.loads == 0 and session_state(request).present == []
    response = web.Response()
    await write_session_cookie(request, response)
    assert "Set-Cookie" not in response.headers


async def test_the_store_is_asked_once_per_request():
    app, store = app_with()
    session = make_session(id="s1", created_at=time.time())
    request = request_with(app, store.codec.dump(session))
    assert await get_session(request) == session
    assert await get_session(request) == session
    assert store.loads == 1 and session_state(request) is session_state(request)


async def test_an_unchanged_session_is_not_written_back():
    app, store = app_with()
    session = make_session(id="s1", created_at=time.time())
    request = request_with(app, store.codec.dump(session))
    await get_session(request)
    response = web.Response()
    await write_session_cookie(request, response)
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("value", ["1.not-sealed-by-us", "garbage", "1." + "A" * 200])
async def test_a_bad_cookie_is_a_signed_out_user_and_the_cookie_is_cleared(value, caplog):
    app, store = app_with()
    request = request_with(app, [("_authproxy", value)])
    assert await get_session(request) is None               # signed out, not an exception (a 500)
    assert "session cookie ignored" in caplog.text
    response = web.Response()
    await write_session_cookie(request, response)
    (cleared,) = response.headers.getall("Set-Cookie")
    assert cleared.startswith("_authproxy=;") and "Max-Age=0" in cleared


async def test_every_chunk_of_a_bad_chunked_cookie_is_cleared():
    app, store = app_with()
    request = request_with(app, [("_authproxy_0", "1.bad"), ("_authproxy_1", "rest"), ("other", "x")])
    assert await get_session(request) is None
    response = web.Response()
    await write_session_cookie(request, response)
    cleared = sorted(c.split("=", 1)[0] for c in response.headers.getall("Set-Cookie"))
    assert cleared == ["_authproxy_0", "_authproxy_1"]
    assert all("Max-Age=0" in c for c in response.headers.getall("Set-Cookie"))


async def test_a_store_that_is_down_is_retried_on_the_next_ask():
    app, store = app_with(down=True)
    request = request_with(app, store.codec.dump(make_session(created_at=time.time())))
    with pytest.raises(StoreUnavailable):
        await get_session(request)
    store.down = False
    assert (await get_session(request)).identity.sub == "alice"
    assert store.loads == 2


# -- writing: once, as headers go out, only what changed -----------------------------------------------------


async def test_a_new_session_is_written_with_the_remaining_life():
    app, store = app_with()
    request = request_with(app, [])
    session = make_session(id="s1", created_at=time.time() - 600)          # cookie.expire is 24 h by default
    set_session(request, session)
    response = web.Response()
    await write_session_cookie(request, response)
    (header,) = response.headers.getall("Set-Cookie")
    name, value = header.split(";", 1)[0].split("=", 1)
    assert name == "_authproxy" and await store.load({name: value}) == session
    max_age = int(header.split("Max-Age=", 1)[1].split(";", 1)[0])
    expire = store.codec.config.expire
    assert expire - 600 - 5 <= max_age <= expire - 600
    assert "HttpOnly" in header


async def test_dropping_the_session_clears_the_cookies_it_came_in():
    app, store = app_with()
    request = request_with(app, store.codec.dump(make_session(created_at=time.time())))
    await get_session(request)
    set_session(request, None)
    response = web.Response()
    await write_session_cookie(request, response)
    (cleared,) = response.headers.getall("Set-Cookie")
    assert cleared.startswith("_authproxy=;") and "Max-Age=0" in cleared


class TicketStore(CookieStore):
    """A store whose cookie stays the same across saves, as the Redis store's ticket does."""

    def __init__(self, codec: CookieCodec) -> None:
        super().__init__(codec, MemoryDenylist())
        self.saves = 0
        self.sessions: dict[str, object] = {}

    async def load(self, cookies):
        return self.sessions.get(cookies.get("_authproxy", ""))

    async def save(self, session, cookies):
        self.saves += 1
        self.sessions["ticket"] = session
        return [("_authproxy", "ticket")]


def ticket_app() -> tuple[web.Application, TicketStore]:
    app, _ = app_with()
    app[STORE] = store = TicketStore(app[CODEC])
    return app, store


async def test_a_refresh_under_an_unchanged_ticket_sends_no_cookie():
    app, store = ticket_app()
    session = make_session(id="s1", created_at=time.time())
    store.sessions["ticket"] = session
    request = request_with(app, [("_authproxy", "ticket")])
    await get_session(request)
    set_session(request, session.with_tokens(access_token="AT-2"))
    response = web.Response()
    await write_session_cookie(request, response)
    assert "Set-Cookie" not in response.headers                 # the ticket is the same ...
    assert store.saves == 1 and store.sessions["ticket"].access_token == "AT-2"   # ... the tokens are saved


async def test_a_session_committed_early_is_saved_once():
    """commit_session saves before the response (a store failure is still a clean error page); the
    hook then sends what was saved instead of saving again."""
    app, store = ticket_app()
    request = request_with(app, [])
    set_session(request, make_session(id="s1", created_at=time.time()))
    await commit_session(request)
    assert store.saves == 1
    response = web.Response()
    await write_session_cookie(request, response)
    assert store.saves == 1
    (header,) = response.headers.getall("Set-Cookie")
    assert header.startswith("_authproxy=ticket;")


async def test_deferred_cookies_go_out_even_when_the_session_is_unchanged():
    app, _ = app_with()
    request = request_with(app, [])
    defer_cookie(request, "_authproxy_login=; Max-Age=0; Path=/")
    response = web.Response(status=500)
    await write_session_cookie(request, response)
    assert response.headers.getall("Set-Cookie") == ["_authproxy_login=; Max-Age=0; Path=/"]


async def test_a_store_down_at_write_time_leaves_the_cookies_as_they_are(caplog):
    """Not a failure (the answer goes out), and not a sign-out either: the browser keeps its cookie."""
    app, store = app_with()
    request = request_with(app, store.codec.dump(make_session(created_at=time.time())))
    await get_session(request)
    set_session(request, make_session(id="s2", created_at=time.time()))

    async def down(session, cookies):
        raise StoreUnavailable("Redis could not be reached (ConnectionError).")

    store.save = down
    response = web.Response()
    await write_session_cookie(request, response)
    assert "Set-Cookie" not in response.headers and "session not stored" in caplog.text


async def test_a_redis_restart_between_a_refresh_and_its_answer_keeps_the_ticket():
    """Soak (issue 19): Redis was restarted after a refresh saved its tokens under the lock
    (``Store.update``) and before the answer's own save. Clearing the ticket then signed the user out
    (their next request: a 401), though Redis still held the session with the new tokens."""
    app, store = ticket_app()
    session = make_session(id="s1", created_at=time.time())
    store.sessions["ticket"] = session.with_tokens(access_token="AT-2")       # the refresh's update
    request = request_with(app, [("_authproxy", "ticket")])
    await get_session(request)
    set_session(request, store.sessions["ticket"])

    async def restarting(session, cookies):
        raise StoreUnavailable("Redis could not be reached (ConnectionError).")

    store.save = restarting
    response = web.Response()
    await write_session_cookie(request, response)
    assert "Set-Cookie" not in response.headers
    assert (await store.load({"_authproxy": "ticket"})).access_token == "AT-2"   # the next request's session


async def test_the_cookie_goes_out_with_a_raised_redirect_and_a_streamed_response(aiohttp_client):
    """on_response_prepare fires for both; a middleware running after the handler would miss the
    streamed one, whose headers are already sent when the handler returns."""
    app, store = app_with()

    async def redirect(request):
        set_session(request, make_session(id="r", created_at=time.time()))
        raise web.HTTPFound("/next")

    async def stream(request):
        set_session(request, make_session(id="s", created_at=time.time()))
        response = web.StreamResponse()
        await response.prepare(request)
        set_session(request, make_session(id="too-late", created_at=time.time()))   # headers are gone
        await response.write(b"body")
        return response

    app.router.add_get("/redirect", redirect)
    app.router.add_get("/stream", stream)
    app.on_response_prepare.append(write_session_cookie)
    client = await aiohttp_client(app)
    for path, session_id in (("/redirect", "r"), ("/stream", "s")):
        response = await client.get(path, allow_redirects=False)
        await response.read()
        (header,) = response.headers.getall("Set-Cookie")
        value = header.split(";", 1)[0].split("=", 1)[1]
        assert (await store.load({"_authproxy": value})).id == session_id
