"""The app's wiring: what outlives a reload, where /metrics is served, and what bounds its size."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.app import Lasting, create_app
from proxy.ending import ENDS, Reason
from proxy.errors import ConfigError
from proxy.gate import handle_proxy
from proxy.metrics import MAX_FAILURE_REASONS, METRICS, Metrics, handle_metrics
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


async def _handler_for(app: web.Application, path: str):
    match = await app.router.resolve(make_mocked_request("GET", path, app=app))
    return match.handler


async def test_metrics_on_the_main_listener_only_when_the_operator_opts_in(caplog):
    caplog.set_level("INFO", logger="authproxy")
    assert await _handler_for(create_app(make_config()), "/metrics") is handle_proxy    # the app's path, signed in
    assert "/metrics is not served: set metrics_listen" in caplog.text
    assert await _handler_for(create_app(make_config(metrics_on_listen=True)), "/metrics") is handle_metrics
    assert await _handler_for(create_app(make_config(metrics_listen="127.0.0.1:9100")), "/metrics") is handle_proxy


def test_metrics_on_listen_and_metrics_listen_exclude_each_other():
    with pytest.raises(ConfigError, match="metrics_on_listen: metrics_listen already serves /metrics"):
        make_config(metrics_on_listen=True, metrics_listen="127.0.0.1:9100")


def test_failed_sign_in_reasons_cannot_grow_the_metrics_without_bound():
    """A provider chooses its OAuth ``error`` codes: past a few dozen distinct reasons they count as "other"."""
    metrics = Metrics()
    for n in range(500):
        metrics.login_failed(f"provider_error_{n}", "rid")
    reasons = {sample.labels["reason"] for family in metrics.registry.collect() for sample in family.samples
               if sample.name == "authproxy_logins_total" and sample.labels["stage"] == "failed"}
    assert len(reasons) == MAX_FAILURE_REASONS + 1 and "other" in reasons
    metrics.login_failed("provider_error_0", "rid")                     # a known reason keeps its own series


async def test_an_app_replaced_by_a_reload_stops_receiving_ends():
    """The fan-out outlives a reload (SIGHUP builds a new app around it): the old app's receiver must go with
    the old app, or every reload adds one that keeps its finished registries alive."""
    from proxy.ending import LocalFanout

    class Recording(LocalFanout):
        def __init__(self) -> None:
            self.receivers: list = []

        def subscribe(self, receive) -> None:
            self.receivers.append(receive)

        def unsubscribe(self, receive) -> None:
            self.receivers.remove(receive)

    fanout, lasting = Recording(), Lasting()
    old = await _started(create_app(make_config(), lasting=lasting, fanout=fanout))
    new_app = create_app(make_config(), lasting=lasting, fanout=fanout)
    new = await _started(new_app)
    assert len(fanout.receivers) == 2
    await old.cleanup()
    assert fanout.receivers == [new_app[ENDS].apply]
    await new.cleanup()
    assert fanout.receivers == []
