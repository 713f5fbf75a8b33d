"""server.py in one process: which event loop runs the proxy; how ``run`` chooses between one process
and workers; a reload's order and its rejection; the runner's options; /metrics on its own listener.

Serving under real signals, and workers, are driven by tests/integration/test_process.py and
test_workers.py; the supervisor's decisions by test_supervisor.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import aiohttp
import pytest

from proxy import server
from proxy.config import Config
from proxy.connections import LimitedRunner
from proxy.errors import ConfigError, Problem
from proxy.server import SERVER_OPTIONS, make_runner, run_loop
from tests.unit.conftest import make_config


def test_one_worker_runs_in_this_process_and_more_fork(monkeypatch):
    calls: list[Any] = []

    async def serve(config: Config, reload: Any) -> None:
        calls.append(("serve", config.worker_count))

    monkeypatch.setattr(server, "serve", serve)
    monkeypatch.setattr(server, "run_loop", lambda main: asyncio.run(main))
    monkeypatch.setattr(server, "run_workers",
                        lambda config, reload, count, worker: calls.append(("fork", count, worker)) or 7)
    assert server.run(make_config(workers=1), make_config) == 0
    assert server.run(make_config(workers=3), make_config) == 7
    assert calls == [("serve", 1), ("fork", 3, server._worker)]


def _loop_type_name() -> str:
    names: list[str] = []

    async def main() -> None:
        names.append(type(asyncio.get_running_loop()).__module__)

    run_loop(main())
    return names[0]


def test_run_loop_uses_uvloop_when_it_is_installed():
    pytest.importorskip("uvloop", reason="uvloop (the speed extra) is not installed here")
    assert _loop_type_name().startswith("uvloop")


def test_run_loop_falls_back_to_asyncio_without_uvloop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)   # import uvloop now raises ImportError
    assert _loop_type_name().startswith("asyncio")


def test_the_runner_serves_as_production_does():
    config = make_config()
    runner = make_runner(server.create_app(config), config, shutdown_timeout=3.0)
    assert isinstance(runner, LimitedRunner)
    assert runner._kwargs["access_log"] is SERVER_OPTIONS["access_log"] is None
    assert runner._kwargs["handler_cancellation"] is True
    assert runner._kwargs["auto_decompress"] is False


async def test_metrics_are_served_on_their_own_listener(unused_tcp_port):
    config = make_config(metrics_listen=f"127.0.0.1:{unused_tcp_port}", listen="127.0.0.1:0")
    app = server.create_app(config)
    app.cleanup_ctx.append(server._metrics_listener(config.metrics_listen))  # as start_runner adds it
    runner = make_runner(app, config)
    await runner.setup()
    try:
        async with aiohttp.ClientSession() as client, \
                client.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as resp:
            assert resp.status == 200
            assert "authproxy_" in await resp.text()
    finally:
        await runner.cleanup()


class FakeRunner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.cleaned = False

    async def cleanup(self) -> None:
        self.cleaned = True


async def test_a_reload_starts_the_new_listener_before_the_old_one_drains(monkeypatch, caplog):
    started: list[FakeRunner] = []

    async def start_runner(config: Config, lasting: Any) -> FakeRunner:
        assert not old.cleaned                          # the old listener still serves while the new one starts
        started.append(FakeRunner(config))
        return started[-1]

    monkeypatch.setattr(server, "start_runner", start_runner)
    monkeypatch.setattr(server, "configure_logging", lambda settings: None)
    # The process's one access log is not this test's to start: it would outlive the test and take the access
    # lines of every later test in this process away from the stdlib logger (and caplog).
    writers: list[Any] = []
    monkeypatch.setattr(server.ACCESS_LOG, "start_writer", writers.append)
    caplog.set_level(logging.INFO, logger="authproxy")
    config, new = make_config(), make_config(workers=2)
    old = FakeRunner(config)
    runner, running = await server._reloaded(old, config, lambda: new, server.Lasting(), supervisor=os.getpid())
    assert (runner, running) == (started[0], new)
    assert writers == [new.logging]                     # the new configuration's access log
    assert old.cleaned
    # A change of workers in a single process waits for a restart (our parent is not a supervisor).
    assert "workers: 2 takes effect when authproxy is restarted" in caplog.text


async def test_a_rejected_reload_keeps_the_running_listener_and_configuration(monkeypatch, caplog):
    async def start_runner(config: Config, lasting: Any) -> FakeRunner:
        raise AssertionError("no listener is started for a rejected file")

    def reload() -> Config:
        raise ConfigError("<unit>", [Problem("cookie.secret", "is required")])

    monkeypatch.setattr(server, "start_runner", start_runner)
    config = make_config()
    old = FakeRunner(config)
    assert await server._reloaded(old, config, reload, server.Lasting(), supervisor=0) == (old, config)
    assert not old.cleaned
    assert "reload rejected, the running configuration stays in force" in caplog.text
    assert "cookie.secret: is required" in caplog.text
