"""``workers: 2`` acts as one proxy: one refresh per session whichever worker gets the requests, an end of
session handled by one worker honoured by all, and both kept through workers and the coordinator being
killed. Real processes throughout: authproxy started as ``python -m proxy``, the real oidc-provider
rotating refresh tokens, a real echo upstream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_observability import metric
from tests.integration.test_websocket import expect_close, start_ws_app
from tests.support.browserless import login_via_http, logout_via_http
from tests.support.echo import EchoServer, header_values, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.idp import IdP
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import REPO, ProxyProcess, start_proxy_process
from tests.support.timing import eventually

pytestmark = pytest.mark.integration

TTL = 4                  # the provider's access-token lifetime
JSON = {"Accept": "application/json"}


def is_coordinator(pid: int) -> bool:
    try:
        return b"proxy.coordinator" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def family(pid: int) -> tuple[set[int], set[int]]:
    """The supervisor's children: (workers, coordinators)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    coordinators = {p for p in found if is_coordinator(p)}
    return found - coordinators, coordinators


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (one per worker: each binds it with SO_REUSEPORT)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def owner_of(local_port: int, remote_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the loopback connection local_port → remote_port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{local_port:04X}") and fields[2].endswith(f":{remote_port:04X}"):
            inode = f"socket:[{fields[9]}]"
            for pid in pids:
                fd_dir = Path(f"/proc/{pid}/fd")
                for fd in fd_dir.iterdir():
                    try:
                        if os.readlink(fd) == inode:
                            return pid
                    except FileNotFoundError:
                        continue
    return None


async def until(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
    return value


async def two_workers(idp_factory, *, backchannel: bool = False, upstream_url: str | None = None,
                      sections: dict | None = None, **idp_options) -> tuple[IdP, EchoServer, ProxyProcess]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    meta = client_metadata(public + "/oauth2/callback",
                           backchannel_logout_uri=public + "/oauth2/backchannel_logout" if backchannel else None)
    idp = await idp_factory(clients=[meta], **idp_options)
    echo = await start_echo(free_port())
    data = config_dict(port=port, issuer=idp.issuer, upstream_url=upstream_url or echo.url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET, workers=2, logging={"level": "warning"}, metrics_on_listen=True,
                       **(sections or {}))
    proxy = await start_proxy_process(data)
    await until(lambda: listeners(port) == 2 and len(family(proxy.proc.pid)[0]) == 2)
    await ready_everywhere(proxy)
    return idp, echo, proxy


async def ready_everywhere(proxy: ProxyProcess) -> None:
    """Both workers answer /ready (fresh connections land on either)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        async def ready() -> bool:
            for _ in range(10):
                try:
                    async with client.get(proxy.url + "/ready") as resp:
                        if resp.status != 200:
                            return False
                except aiohttp.ClientError:
                    return False
            return True
        deadline = time.monotonic() + 20
        while not await ready():
            assert time.monotonic() < deadline, "the workers never became ready"
            await asyncio.sleep(0.1)


async def burst(url: str, cookie: str, count: int = 20) -> list[tuple[int, dict]]:
    """``count`` concurrent requests, each on a connection of its own (so the kernel spreads them)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count, force_close=True)) as client:
        async def one(i: int) -> tuple[int, dict]:
            async with client.get(f"{url}/burst/{i}", headers={**JSON, "Cookie": cookie}, allow_redirects=False) as r:
                return r.status, (await r.json() if r.status == 200 else {})
        return await asyncio.gather(*(one(i) for i in range(count)))


async def sign_in(url: str) -> tuple[str, str]:
    """The session cookie of a fresh sign-in, and the access token the app saw."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        first = await login_via_http(browser, url + "/")
        assert first.status == 200
        cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("_authproxy"))
    return cookie, header_values(json.loads(first.body_text), "Authorization")[0]


async def test_twenty_requests_after_expiry_make_one_refresh_grant_across_two_workers(idp_factory):
    idp, echo, proxy = await two_workers(idp_factory, access_token_ttl=TTL, rotate_refresh_token=True)
    try:
        cookie, old_token = await sign_in(proxy.url)
        await asyncio.sleep(TTL + 0.5)                              # expired in every worker
        seen_before = len(echo.seen)
        results = await burst(proxy.url, cookie)
        assert [status for status, _ in results] == [200] * 20, [status for status, _ in results]
        tokens = {header_values(body, "Authorization")[0] for _, body in results}
        assert len(tokens) == 1 and old_token not in tokens
        assert idp.count_grants("refresh_token") == 1
        assert idp.count_grants("refresh_token", ok=False) == 0
        # Both workers forwarded some of the burst: who holds each upstream connection the echo saw.
        workers, _ = family(proxy.proc.pid)
        echo_port = int(echo.url.rsplit(":", 1)[1])
        served = {owner_of(record["peer_port"], echo_port, workers) for record in echo.seen[seen_before:]}
        assert served == workers, (served, workers)
    finally:
        assert await proxy.stop() == 0
        await echo.close()


async def refused_everywhere(url: str, cookie: str) -> None:
    statuses = [status for status, _ in await burst(url, cookie)]
    assert statuses == [401] * 20, statuses


async def all_refused(url: str, cookie: str) -> bool:
    return [status for status, _ in await burst(url, cookie)] == [401] * 20


async def scrapes(url: str, count: int = 10) -> list[str]:
    """``/metrics`` ``count`` times, each on a fresh connection (the kernel picks a worker for each)."""
    texts = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        for _ in range(count):
            async with client.get(url + "/metrics") as resp:
                assert resp.status == 200
                texts.append(await resp.text())
    return texts


async def ends_received_by_each_worker(url: str) -> set[float]:
    """What each scrape says of the ends received from other workers (the sum over the workers)."""
    return {metric(text, "authproxy_host_ends_received_total") for text in await scrapes(url, 20)}


async def replace_worker(proxy: ProxyProcess, victim: int) -> None:
    os.kill(victim, signal.SIGKILL)
    await until(lambda: len(family(proxy.proc.pid)[0]) == 2 and victim not in family(proxy.proc.pid)[0])
    await until(lambda: listeners(int(proxy.url.rsplit(":", 1)[1])) == 2)
    await ready_everywhere(proxy)


async def test_a_logout_in_one_worker_reaches_every_worker_and_outlives_restarts(idp_factory):
    idp, echo, proxy = await two_workers(idp_factory, backchannel=True)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            assert (await login_via_http(browser, proxy.url + "/")).status == 200
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("_authproxy"))
            assert [s for s, _ in await burst(proxy.url, cookie)] == [200] * 20
            await logout_via_http(browser, f"{idp.issuer}/session/end?client_id={CLIENT_ID}")
        assert (await idp.wait_for_event("backchannel", timeout=10))["ok"] is True    # one worker took it
        # Every worker learns of it (a fan-out through the coordinator: milliseconds; the deadline is for a
        # loaded machine, where a fixed one-second sleep was a bet).
        await eventually(lambda: all_refused(proxy.url, cookie), what="every worker refusing the ended session")
        # Ends received from the others: 1 in the worker that did not take the logout, 0 in the one that did
        # (its own end is not sent back to it); every scrape, whichever worker answers it, shows the sum.
        assert await ends_received_by_each_worker(proxy.url) == {1.0}

        (coordinator,) = family(proxy.proc.pid)[1]
        socket = Path(Path(f"/proc/{coordinator}/cmdline").read_bytes().split(b"\0")[-2].decode())
        assert socket.is_socket() and socket.parent.stat().st_mode & 0o777 == 0o700     # this user only
        originals = family(proxy.proc.pid)[0]
        await replace_worker(proxy, min(originals))                 # SIGKILL: a fresh worker, empty memory
        assert family(proxy.proc.pid)[1] == {coordinator}           # the coordinator outlived it
        await refused_everywhere(proxy.url, cookie)                 # the replacement got the end on connect

        os.kill(coordinator, signal.SIGKILL)                        # the supervisor starts a new one ...
        await until(lambda: family(proxy.proc.pid)[1] - {coordinator})
        await replace_worker(proxy, max(originals))                 # ... which learnt the end from the survivor
        await refused_everywhere(proxy.url, cookie)
        assert "host coordinator" in proxy.stderr and "starting a new one" in proxy.stderr
        everyone = set().union(*family(proxy.proc.pid))
    finally:
        assert await proxy.stop() == 0
        await echo.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in everyone)     # no worker or coordinator left over
    assert not socket.parent.exists()                                        # nor its directory


async def test_a_sign_out_served_by_one_worker_closes_the_sessions_websockets_in_both(idp_factory):
    ws_app = await start_ws_app()
    idp, echo, proxy = await two_workers(idp_factory, upstream_url=ws_app.url)
    port = int(proxy.url.rsplit(":", 1)[1])
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            assert (await login_via_http(browser, proxy.url + "/")).status == 200
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("_authproxy"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            sockets, holders = [], {}
            workers, _ = family(proxy.proc.pid)
            while set(holders.values()) != workers:                 # one socket at least in each worker
                assert len(sockets) < 30, holders
                ws = await client.ws_connect(proxy.url.replace("http://", "ws://") + "/ws",
                                             headers={"Cookie": cookie})
                sockets.append(ws)
                holders[ws] = owner_of(port, ws.get_extra_info("sockname")[1], workers)
            async with client.get(proxy.url + "/oauth2/sign_out", headers={"Cookie": cookie},
                                  allow_redirects=False) as resp:
                assert resp.status in (302, 303)
            started = time.monotonic()
            closes = await asyncio.gather(*(expect_close(ws, 5.0) for ws in sockets))
            assert {code for code, _ in closes} == {4401}
            assert time.monotonic() - started < 3.0                  # the other worker's too, within seconds
            for ws in sockets:
                await ws.close()
    finally:
        assert await proxy.stop() == 0
        await echo.close()
        await ws_app.runner.cleanup()


def shared_metrics_dir(pids: set[int]) -> Path:
    """The directory the workers keep their metrics in: the files they have mapped (/proc/PID/maps)."""
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if "/authproxy-metrics-" in line:
                return Path(line.split()[-1]).parent
    raise AssertionError("no worker maps a metrics file")


async def test_metrics_sum_every_worker_and_a_killed_worker_keeps_its_counts(idp_factory):
    """Every scrape, whichever worker answers, shows the host's totals; a worker killed with SIGKILL and
    replaced takes its open sockets out of the live gauge but leaves its counts in the totals."""
    ws_app = await start_ws_app()
    echo_for_ws = await start_echo(free_port())
    idp, echo, proxy = await two_workers(idp_factory, upstream_url=echo_for_ws.url, sections={
        "upstreams": [{"path": "/", "url": echo_for_ws.url}, {"path": "/ws", "url": ws_app.url}]})
    port = int(proxy.url.rsplit(":", 1)[1])
    answered = ("authproxy_requests_total", {"upstream": "/", "status_class": "2xx"})
    try:
        cookie, _ = await sign_in(proxy.url)
        (before,) = {metric(text, answered[0], **answered[1]) for text in await scrapes(proxy.url)}
        seen_before = len(echo_for_ws.seen)
        assert [status for status, _ in await burst(proxy.url, cookie)] == [200] * 20
        workers, _ = family(proxy.proc.pid)
        echo_port = int(echo_for_ws.url.rsplit(":", 1)[1])
        served = {owner_of(record["peer_port"], echo_port, workers) for record in echo_for_ws.seen[seen_before:]}
        assert served == workers, (served, workers)                    # both workers counted some of them
        assert {metric(text, answered[0], **answered[1]) for text in await scrapes(proxy.url)} == {before + 20}

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            holders: dict = {}
            while set(holders.values()) != workers:                 # one socket at least in each worker
                assert len(holders) < 30, holders
                ws = await client.ws_connect(proxy.url.replace("http://", "ws://") + "/ws",
                                             headers={"Cookie": cookie})
                holders[ws] = owner_of(port, ws.get_extra_info("sockname")[1], workers)
            active = {metric(text, "authproxy_websockets_active") for text in await scrapes(proxy.url)}
            assert active == {len(holders)}
            directory = shared_metrics_dir(workers)
            assert directory.stat().st_mode & 0o777 == 0o700

            victim = min(workers)
            await replace_worker(proxy, victim)
            survivors = sum(1 for pid in holders.values() if pid != victim)
            texts = await scrapes(proxy.url)
            assert {metric(text, "authproxy_websockets_active") for text in texts} == {survivors}
            assert {metric(text, answered[0], **answered[1]) for text in texts} == {before + 20}   # not reset
            assert [status for status, _ in await burst(proxy.url, cookie)] == [200] * 20
            assert {metric(text, answered[0], **answered[1]) for text in await scrapes(proxy.url)} == {before + 40}
            for ws in holders:
                await ws.close()
    finally:
        assert await proxy.stop() == 0
        await echo.close()
        await echo_for_ws.close()
        await ws_app.runner.cleanup()
    assert not directory.exists()                                  # removed with the supervisor


HOLDER = """
import asyncio, sys
from proxy.host import HostLink
async def main():
    link = HostLink(sys.argv[1])
    async with link.lock("refresh:k", 60) as held:
        print("held" if held else "not held", flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_a_lock_held_by_a_killed_worker_is_released_at_once(tmp_path):
    from proxy.host import HostLink
    path = str(tmp_path / "c.sock")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    coordinator = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy.coordinator", path, env=env)
    holder = None
    link = None
    try:
        await until(lambda: Path(path).exists())
        assert Path(path).stat().st_mode & 0o077 == 0                # only this user
        holder = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER, path, env=env,
                                                      stdout=asyncio.subprocess.PIPE)
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 20) == b"held\n"
        link = HostLink(path)
        waiting = asyncio.ensure_future(link.lock("refresh:k", 60).__aenter__())
        await asyncio.sleep(0.5)
        assert not waiting.done()                                     # held by the other process
        holder.kill()                                                 # SIGKILL: no unlock is ever sent
        started = time.monotonic()
        assert await asyncio.wait_for(waiting, 10) is True
        assert time.monotonic() - started < 5                         # far sooner than the 60 s lease
    finally:
        if link is not None:
            await link.close()
        for proc in (holder, coordinator):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
