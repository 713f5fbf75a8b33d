"""Tests for proxy.connections that need no sockets (the sockets are in tests/integration/test_limits.py)."""

from __future__ import annotations

import asyncio
import resource

import pytest

from proxy.config import LimitsConfig
from proxy.connections import HEAD_TOO_LARGE, TOO_MANY, raise_descriptor_limit


@pytest.fixture
def rlimit(monkeypatch):
    """resource's open-files limit, faked: (soft, hard), and the calls that set it."""
    state = {"limit": (1024, 1 << 20), "set": []}

    def setrlimit(which, value):
        assert which == resource.RLIMIT_NOFILE
        if value[0] > state["limit"][1]:
            raise ValueError("not allowed")
        state["limit"] = value
        state["set"].append(value)

    monkeypatch.setattr(resource, "getrlimit", lambda which: state["limit"])
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return state


def test_the_soft_limit_is_raised_to_fit_max_connections(rlimit, caplog):
    raise_descriptor_limit(LimitsConfig(max_connections=4096))
    assert rlimit["limit"] == (2 * 4096 + 64, 1 << 20)
    assert "ulimit" not in caplog.text


def test_a_hard_limit_too_low_is_a_warning_naming_the_key(rlimit, caplog):
    rlimit["limit"] = (1024, 2048)
    raise_descriptor_limit(LimitsConfig(max_connections=4096))
    assert rlimit["limit"] == (2048, 2048)
    assert "limits.max_connections" in caplog.text and "992" in caplog.text


def test_enough_already_changes_nothing(rlimit):
    rlimit["limit"] = (100000, 100000)
    raise_descriptor_limit(LimitsConfig(max_connections=4096))
    assert rlimit["set"] == []


@pytest.mark.parametrize("answer", [TOO_MANY, HEAD_TOO_LARGE])
def test_the_early_answers_are_whole_http_responses(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:")).split(b":")[1])
    assert length == len(body) and b"Connection: close" in head


async def test_memory_is_given_back_once_after_a_burst_of_connections_closes(monkeypatch):
    """A thousand connections closed since the most held: one malloc_trim, TRIM_DELAY later; not per close."""
    from aiohttp import web

    from proxy import connections

    trims = []
    monkeypatch.setattr(connections, "MALLOC_TRIM", lambda: trims.append(1))
    monkeypatch.setattr(connections, "TRIM_DELAY", 0.0)
    server = connections.LimitedServer(LimitsConfig(max_connections=5000), lambda request: web.Response())
    for _ in range(connections.TRIM_AFTER + 10):
        server()
    for _ in range(connections.TRIM_AFTER - 1):
        server.released()
    await asyncio.sleep(0.01)
    assert trims == []                             # not yet a burst
    for _ in range(11):
        server.released()
    await asyncio.sleep(0.01)
    assert trims == [1] and server.open == 0
    for _ in range(5):                             # a few more come and go: no trim for them
        server()
    for _ in range(5):
        server.released()
    await asyncio.sleep(0.01)
    assert trims == [1]


async def test_a_sweep_that_takes_many_parsers_gives_the_memory_back(monkeypatch):
    from aiohttp import web

    from proxy import connections

    trims = []
    monkeypatch.setattr(connections, "MALLOC_TRIM", lambda: trims.append(1))
    server = connections.LimitedServer(LimitsConfig(max_connections=5000), lambda request: web.Response())
    handlers = [server() for _ in range(connections.TRIM_AFTER)]
    server._connections.update((handler, None) for handler in handlers)
    monkeypatch.setattr(connections.LimitedHandler, "shed_parser", lambda self: self in handlers[1:])
    server._sweep()                                    # one short of TRIM_AFTER shed: no trim
    await asyncio.sleep(0.01)
    assert trims == []
    monkeypatch.setattr(connections.LimitedHandler, "shed_parser", lambda self: True)
    server._sweep()
    await asyncio.sleep(0.01)
    assert trims == [1]
    server._sweeper.cancel()
