"""The Session value (what it prints) and the request path around it."""

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.cookies import CookieCodec
from proxy.crypto import Sealer
from proxy.ending import ENDS, LocalFanout, Reason, SessionEnds
from proxy.session import CODEC, STORE, get_session, session_state, set_session, write_session_cookie
from proxy.errors import StoreUnavailable
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
