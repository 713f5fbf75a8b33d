"""The access log of a real ``python -m proxy``: lines are batched in memory (logs.AccessWriter), so these check
what batching could lose — every line is written when the process is told to stop right after its requests,
and a line waits only a bounded time while the process keeps running."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import start_proxy_process

pytestmark = pytest.mark.integration

REQUESTS = 300


def logged_config(upstream_url: str, **sections) -> dict:
    """The default logging (level info, text): one access line per request; /blob passes without a session."""
    return config_dict(port=free_port(), issuer=f"http://127.0.0.1:{free_port()}", upstream_url=upstream_url,
                       client_id="c", client_secret="s", skip_auth=[{"path": "^/blob"}],
                       logging={"level": "info"}, **sections)


def access_lines(stderr: str, marker: str) -> list[str]:
    return [line for line in stderr.splitlines() if " authproxy.access: GET /blob" in line and marker in line]


async def get_many(url: str, count: int, marker: str) -> None:
    async with aiohttp.ClientSession() as client:
        for n in range(count):
            async with client.get(url + "/blob", headers={"X-Request-Id": f"{marker}-{n}"}) as resp:
                assert resp.status == 200
                await resp.read()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_right_after_the_requests_loses_no_access_line(rich, workers):
    """SIGTERM within a millisecond of the last answer, long before the flush timer: every line is written."""
    proxy = await start_proxy_process(logged_config(rich.url, workers=workers), ready_path="/ping")
    try:
        await get_many(proxy.url, REQUESTS, "term")
        proxy.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proxy.proc.wait(), 15) == 0
    finally:
        await proxy.stop()
    lines = access_lines(proxy.stderr, "rid=term-")
    assert sorted(lines, key=lambda line: int(line.rsplit("-", 1)[1])) == lines or workers > 1
    assert {line.rsplit("rid=", 1)[1] for line in lines} == {f"term-{n}" for n in range(REQUESTS)}
    assert len(lines) == REQUESTS


async def test_sighup_writes_the_waiting_lines_and_the_new_writer_goes_on(rich):
    proxy = await start_proxy_process(logged_config(rich.url), ready_path="/ping")
    try:
        await get_many(proxy.url, 50, "before")
        proxy.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "configuration reloaded" in proxy.stderr:
                break
            await asyncio.sleep(0.05)
        await get_many(proxy.url, 50, "after")
        proxy.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proxy.proc.wait(), 15) == 0
    finally:
        await proxy.stop()
    assert len(access_lines(proxy.stderr, "rid=before-")) == 50
    assert len(access_lines(proxy.stderr, "rid=after-")) == 50


async def test_a_line_is_written_within_a_bounded_delay_while_the_proxy_runs(rich):
    """No shutdown, no more requests: the timer writes the line (FLUSH_INTERVAL, 50 ms; allow for a busy machine)."""
    proxy = await start_proxy_process(logged_config(rich.url), ready_path="/ping")
    try:
        await get_many(proxy.url, 1, "alone")
        answered = time.monotonic()
        while not access_lines(proxy.stderr, "rid=alone-0") and time.monotonic() - answered < 5:
            await asyncio.sleep(0.01)
        delay = time.monotonic() - answered
        assert access_lines(proxy.stderr, "rid=alone-0"), proxy.stderr
        assert delay < 1.0
        assert proxy.proc.returncode is None
    finally:
        await proxy.stop()
