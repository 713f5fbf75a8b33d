"""authproxy as a real process: graceful SIGTERM, SIGHUP reloads, and workers kept alive by a supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import start_proxy_process

pytestmark = pytest.mark.integration


def public_config(upstream_url: str, **sections) -> dict:
    """A proxy whose /slow and /blob pass without a session (skip_auth), so no provider is needed;
    the provider URL points nowhere and the proxy must stay up regardless."""
    return config_dict(port=free_port(), issuer=f"http://127.0.0.1:{free_port()}", upstream_url=upstream_url,
                       client_id="c", client_secret="s", skip_auth=[{"path": "^/(slow|blob)"}], **sections)


async def test_sigterm_finishes_in_flight_requests(rich):
    proxy = await start_proxy_process(public_config(rich.url, shutdown_timeout="10s"), ready_path="/ping")
    async with aiohttp.ClientSession() as client:
        slow = asyncio.ensure_future(client.get(proxy.url + "/slow?s=1.5"))
        await asyncio.sleep(0.5)
        proxy.proc.send_signal(signal.SIGTERM)
        resp = await slow
        assert resp.status == 200 and await resp.text() == "late"
        resp.release()
    assert await asyncio.wait_for(proxy.proc.wait(), 10) == 0
    await proxy.stop()
    assert "shutting down" in proxy.stderr


async def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_one(rich):
    data = public_config(rich.url)
    proxy = await start_proxy_process(data, ready_path="/ping")
    path = Path(proxy.config_path)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.url + "/echo-me", headers={"Accept": "application/json"}) as resp:
                assert resp.status == 401                         # not a skip path yet
            path.write_text(yaml.safe_dump({**data, "skip_auth": [{"path": "^/(slow|blob|echo-me)"}]}))
            proxy.proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                await asyncio.sleep(0.1)
                async with client.get(proxy.url + "/echo-me", headers={"Accept": "application/json"}) as resp:
                    if resp.status == 200:
                        break
            assert resp.status == 200 and "configuration reloaded" in proxy.stderr
            path.write_text(yaml.safe_dump({**data, "cookie": {"secret": "too-short"}}))
            proxy.proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                await asyncio.sleep(0.1)
                if "reload rejected" in proxy.stderr:
                    break
            assert "reload rejected" in proxy.stderr and "cookie.secret" in proxy.stderr
            async with client.get(proxy.url + "/echo-me", headers={"Accept": "application/json"}) as resp:
                assert resp.status == 200                         # the last good configuration is in force
    finally:
        assert await proxy.stop() == 0


def children(pid: int) -> set[int]:
    """The supervisor's workers (its other child, the host coordinator, is not one)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return {p for p in found if not is_coordinator(p)}


def is_coordinator(pid: int) -> bool:
    try:
        return b"proxy.coordinator" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


async def test_workers_share_the_port_and_a_crashed_one_is_replaced(rich):
    proxy = await start_proxy_process(public_config(rich.url, workers=2), ready_path="/ping")
    try:
        for _ in range(50):
            workers = children(proxy.proc.pid)
            if len(workers) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(workers) == 2
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.1)
            now = children(proxy.proc.pid)
            if len(now) == 2 and victim not in now:
                break
        assert len(now) == 2 and victim not in now
        async with aiohttp.ClientSession() as client:
            for _ in range(10):
                async with client.get(proxy.url + "/ping") as resp:
                    assert resp.status == 200
        assert "starting a new one" in proxy.stderr
    finally:
        assert await proxy.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in now)


async def test_one_process_starts_no_coordinator(rich):
    """``workers: 1`` pays nothing for sharing: no child process, no socket."""
    proxy = await start_proxy_process(public_config(rich.url), ready_path="/ping")
    try:
        tasks = Path(f"/proc/{proxy.proc.pid}/task").iterdir()
        assert all(not (task / "children").read_text().split() for task in tasks)
    finally:
        assert await proxy.stop() == 0


async def wait_for(condition, timeout: float = 10.0):
    for _ in range(int(timeout / 0.1)):
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.1)
    return condition()


async def test_sighup_applies_a_new_logging_format(rich):
    data = public_config(rich.url, logging={"level": "info", "format": "text"})
    proxy = await start_proxy_process(data, ready_path="/ping")
    try:
        Path(proxy.config_path).write_text(yaml.safe_dump({**data, "logging": {"level": "info", "format": "json"}}))
        proxy.proc.send_signal(signal.SIGHUP)
        assert await wait_for(lambda: "configuration reloaded" in proxy.stderr)
        reloaded = next(line for line in proxy.stderr.splitlines() if "configuration reloaded" in line)
        assert reloaded.startswith("{") and '"message": "configuration reloaded' in reloaded
    finally:
        assert await proxy.stop() == 0


async def test_sighup_resizes_the_workers_and_replacements_run_the_new_config(rich):
    data = public_config(rich.url, workers=2)
    proxy = await start_proxy_process(data, ready_path="/ping")
    path = Path(proxy.config_path)
    try:
        assert await wait_for(lambda: len(children(proxy.proc.pid)) == 2)
        path.write_text(yaml.safe_dump({**data, "workers": 3, "skip_auth": [{"path": "^/(slow|blob|echo-me)"}]}))
        proxy.proc.send_signal(signal.SIGHUP)
        assert await wait_for(lambda: len(children(proxy.proc.pid)) == 3)
        path.write_text(yaml.safe_dump({**data, "workers": 1, "skip_auth": [{"path": "^/(slow|blob|echo-me)"}]}))
        proxy.proc.send_signal(signal.SIGHUP)
        assert await wait_for(lambda: len(children(proxy.proc.pid)) == 1)
        (survivor,) = children(proxy.proc.pid)
        os.kill(survivor, signal.SIGKILL)                  # its replacement must start with the new config
        assert await wait_for(lambda: len(children(proxy.proc.pid)) == 1 and survivor not in children(proxy.proc.pid))
        async with aiohttp.ClientSession() as client:
            ok = False
            for _ in range(50):
                try:
                    async with client.get(proxy.url + "/echo-me", headers={"Accept": "application/json"}) as resp:
                        ok = resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)                # the replacement is still starting
            assert ok, "the replacement worker runs the configuration from before the reload"
    finally:
        assert await proxy.stop() == 0


async def test_metrics_keep_counting_across_a_reload(rich):
    data = public_config(rich.url, metrics_on_listen=True)
    proxy = await start_proxy_process(data, ready_path="/ping")

    async def answered_2xx(client: aiohttp.ClientSession) -> float:
        async with client.get(proxy.url + "/metrics") as resp:
            text = await resp.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("authproxy_requests_total{") and 'status_class="2xx"' in line)

    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(5):
                async with client.get(proxy.url + "/blob") as resp:
                    assert resp.status == 200
            before = await answered_2xx(client)
            assert before >= 5
            Path(proxy.config_path).write_text(yaml.safe_dump({**data, "shutdown_timeout": "5s"}))
            proxy.proc.send_signal(signal.SIGHUP)
            assert await wait_for(lambda: "configuration reloaded" in proxy.stderr)
            await asyncio.sleep(0.2)
            assert await answered_2xx(client) >= before            # not back to zero
    finally:
        assert await proxy.stop() == 0
