"""Session controls through the real app (issue 17): the idle timeout as the gate applies it — when a use is
recorded (a new cookie at most every touch interval, never on every request), when an idle session is signed
out, and that a recorded use never puts back tokens a concurrent refresh replaced nor an older last-seen time
than the request's own cookie. The model's arithmetic and the config checks are here too; the codec's side is
in test_cookies.py, the stores' in the contract suite, the whole flow in tests/integration."""

from __future__ import annotations

import pytest

from proxy.context import REFRESHER
from proxy.crypto import fingerprint
from proxy.errors import ConfigError
from proxy.model import TOUCH_MAX, idle_window, touch_interval
from proxy.session import CODEC
from tests.support.unit_app import cookie_for, metadata_loaded, unit_app, unit_config
from tests.unit.conftest import NOW, make_config, make_session

API = {"Accept": "application/json"}
IDLE = {"cookie": {"name": "_authproxy", "idle_timeout": "40s"}}      # touch every 10 s, ends 40-50 s idle


@pytest.fixture
async def client(aiohttp_client):
    async def make(**sections):
        app = unit_app(unit_config(**sections))
        c = await aiohttp_client(app)
        await metadata_loaded(app)
        return app, c
    return make


def session_cookie(app, response):
    """The session sealed in the response's Set-Cookie for ``_authproxy``, opened with the app's codec."""
    values = [h.split(";", 1)[0].split("=", 1) for h in response.headers.getall("Set-Cookie", ())]
    pairs = {name: value for name, value in values if name == "_authproxy" and value}
    return app[CODEC].load(pairs) if pairs else None


def test_touch_interval_is_a_quarter_of_the_timeout_at_most_five_minutes():
    assert touch_interval(40) == 10 and idle_window(40) == 50
    assert touch_interval(3600) == TOUCH_MAX == 300 and idle_window(3600) == 3900


def test_model_idle_arithmetic():
    s = make_session(created_at=NOW - 100, last_seen=NOW - 20)
    assert s.last_active() == NOW - 20
    assert s.seen_due(40, NOW) and not s.seen_due(40, NOW - 11) and not s.seen_due(None, NOW)
    assert not s.idle_expired(40, NOW + 29.9) and s.idle_expired(40, NOW + 30) and not s.idle_expired(None, NOW + 1e6)


def test_an_idle_timeout_not_shorter_than_expire_stops_start_up_naming_the_key():
    with pytest.raises(ConfigError, match=r"cookie\.idle_timeout.*not shorter than cookie\.expire"):
        make_config(cookie={"idle_timeout": "2h", "expire": "1h"})
    with pytest.raises(ConfigError, match="header_budget"):
        make_config(cookie={"header_budget": 100})


async def test_a_use_is_recorded_only_once_the_last_is_a_touch_interval_old(client):
    app, c = await client(**IDLE)
    recent = make_session(last_seen=NOW - 9)
    response = await c.get("/oauth2/userinfo", headers={**API, **cookie_for(app, recent)})
    assert response.status == 200 and "Set-Cookie" not in response.headers        # no write per request
    stale = make_session(last_seen=NOW - 10)
    response = await c.get("/oauth2/userinfo", headers={**API, **cookie_for(app, stale)})
    assert response.status == 200
    written = session_cookie(app, response)
    assert written is not None and written.last_seen == NOW
    assert written == stale.with_tokens(last_seen=NOW)                             # nothing else changed


async def test_an_idle_session_is_signed_out_and_its_cookie_cleared(client):
    app, c = await client(**IDLE)
    idle = make_session(created_at=NOW - 100, last_seen=NOW - 50)
    response = await c.get("/oauth2/userinfo", headers={**API, **cookie_for(app, idle)})
    assert response.status == 401
    assert any(h.startswith("_authproxy=;") for h in response.headers.getall("Set-Cookie"))
    response = await c.get("/page", headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate",
                                             "Sec-Fetch-Dest": "document", **cookie_for(app, idle)},
                           allow_redirects=False)
    assert response.status == 302 and "/authorize?" in response.headers["Location"]


async def test_without_idle_timeout_nothing_is_recorded(client):
    app, c = await client(cookie={"name": "_authproxy"})
    old = make_session(created_at=NOW - 100, last_seen=None)
    response = await c.get("/oauth2/userinfo", headers={**API, **cookie_for(app, old)})
    assert response.status == 200 and "Set-Cookie" not in response.headers


async def test_a_recorded_use_takes_the_tokens_a_concurrent_refresh_gave(client):
    """Request A records a use with the cookie it came with while request B of the same browser refreshed:
    A's cookie must carry B's new tokens, or whichever answer arrives last puts the spent refresh token back."""
    app, c = await client(**IDLE)
    stale = make_session(last_seen=NOW - 10)
    refreshed = stale.with_tokens(access_token="AT-new", refresh_token="RT-new", expires_at=NOW + 600,
                                  issued_at=NOW - 1, last_seen=NOW - 30)
    app[REFRESHER]._remember(fingerprint("RT-secret"), refreshed, NOW, 30)
    response = await c.get("/oauth2/userinfo", headers={**API, **cookie_for(app, stale)})
    written = session_cookie(app, response)
    assert written is not None
    assert written.refresh_token == "RT-new" and written.access_token == "AT-new"
    assert written.last_seen == NOW                            # the later of the two times, not the result's


async def test_a_shared_refresh_result_never_carries_an_older_last_seen(client):
    app, c = await client(**IDLE)
    due = make_session(last_seen=NOW - 5, expires_at=NOW + 10, issued_at=NOW - 290)   # refresh due, touch not
    result = due.with_tokens(access_token="AT-2", refresh_token="RT-2", expires_at=NOW + 600, issued_at=NOW,
                             last_seen=NOW - 45)
    app[REFRESHER]._remember(fingerprint("RT-secret"), result, NOW, 30)
    response = await c.get("/oauth2/userinfo", headers={**API, **cookie_for(app, due)})
    assert response.status == 200
    written = session_cookie(app, response)
    assert written is not None and written.refresh_token == "RT-2"
    assert written.last_seen == NOW - 5                        # this request's own time, not the result's older one


def test_config_schema_describes_the_new_keys():
    import jsonschema
    import yaml

    from proxy.config import Config
    from tests.unit.test_config import EXAMPLE

    schema = Config.model_json_schema()
    cookie = schema["$defs"]["CookieConfig"]["properties"]
    assert {"idle_timeout", "minimal", "header_budget"} <= set(cookie)
    base = yaml.safe_load(EXAMPLE.read_text())
    for good in ({"idle_timeout": "30m"}, {"idle_timeout": None}, {"minimal": True}, {"header_budget": 16384}):
        jsonschema.validate({**base, "cookie": {**base["cookie"], **good}}, schema)
    for wrong in ({"idle_timeout": "soon"}, {"minimal": "yes please"}, {"header_budget": 100}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, "cookie": {**base["cookie"], **wrong}}, schema)
