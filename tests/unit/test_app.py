"""The app's wiring: what outlives a reload."""

from __future__ import annotations

from aiohttp import web

from proxy.app import Lasting, create_app
from proxy.ending import ENDS, Reason
from proxy.metrics import METRICS
from proxy.session import STORE, Identity, Session
from tests.unit.conftest import make_config


async def _started(app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()                       # runs the cleanup contexts' start-up halves (the store)
    return runner


async def test_a_rebuilt_app_keeps_the_metrics_and_the_memory_denylist():
    lasting = Lasting()
    first, second = create_app(make_config(), lasting=lasting), create_app(make_config(), lasting=lasting)
    runners = [await _started(first), await _started(second)]
    try:
        assert first[METRICS] is second[METRICS] is lasting.metrics
        assert lasting.denylist is not None
        assert first[STORE].denylist is second[STORE].denylist is lasting.denylist
        session = Session(identity=Identity(sub="alice"), access_token="AT", created_at=0.0, sid="s1")
        first_ends = first[ENDS]
        await first_ends.end(first_ends.new(Reason.BACKCHANNEL, sid="s1"))   # ended under the old configuration ...
        assert await second[STORE].denylist.ended(session)             # ... stays ended under the new one
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_apps_without_a_lasting_each_have_their_own():
    one, two = create_app(make_config()), create_app(make_config())
    assert one[METRICS] is not two[METRICS]
