"""The servers of the soak (bench/soak.py) and the faults done to them.

oidc-provider (rotating refresh tokens, short access tokens, a fixed signing key so a restart keeps it),
two upstreams (bench/soak_upstream.py on a loopback port and on a unix socket), redis-server with its
append-only file (so a restart keeps the sessions, as a production Redis with persistence does) and
authproxy as ``python -m proxy`` with ``workers: 2``. Every process is started by ``bench/stack.py``'s
``Stack`` (its own process group, killed with the soak) except the provider and Redis, which their test
helpers start and ``SoakStack.close`` stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import AUTHPROXY_CLIENT, OIDC_SCOPES, Proc, Stack, free_port, wait_port

from tests.support.idp import IdP, generate_jwks
from tests.support.redis_server import RedisServer, start_redis

HERE = Path(__file__).resolve().parent
# Seconds the supervisor gets to replace a killed worker before the soak says it did not.
WORKER_RESTART_LIMIT = 20.0


@dataclass
class SoakStack:
    """Everything the soak runs, started by ``start()``; ``url`` is authproxy's public URL."""

    stack: Stack
    store: str
    ttl: int
    workers: int = 2
    idp: IdP | None = None
    redis: RedisServer | None = None
    upstream_tcp: Proc | None = None
    upstream_unix: Proc | None = None
    proxy: Proc | None = None
    url: str = ""
    tcp_port: int = 0
    socket_path: Path = field(default_factory=Path)
    config_path: Path = field(default_factory=Path)
    config: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        client_id, client_secret = AUTHPROXY_CLIENT
        client = {"client_id": client_id, "client_secret": client_secret,
                  "redirect_uris": [self.url + "/oauth2/callback"],
                  "post_logout_redirect_uris": [self.url + "/oauth2/signed_out"],
                  "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                  "token_endpoint_auth_method": "client_secret_basic"}
        self.idp = await self.stack.idp(clients=[client], access_token_ttl=self.ttl, id_token_ttl=self.ttl,
                                        rotate_refresh_token=True, jwks=generate_jwks("EC"))
        self.tcp_port = free_port()
        self.socket_path = self.stack.root / "upstream.sock"
        self.upstream_tcp = await self._upstream_tcp()
        self.upstream_unix = await self.stack.spawn("upstream-unix", [sys.executable, str(HERE / "soak_upstream.py"),
                                                                      "--unix", str(self.socket_path)])
        await _wait_unix(self.socket_path, self.upstream_unix)
        session: dict[str, Any] = {"store": "cookie"}
        if self.store == "redis":
            self.redis = await start_redis(free_port(), persist=True)
            session = {"store": "redis", "redis": {"url": self.redis.url}}
        self.config = {
            "listen": f"127.0.0.1:{port}",
            "public_url": self.url,
            "provider": {"issuer": self.idp.issuer, "client_id": client_id, "client_secret": client_secret,
                         "scopes": OIDC_SCOPES, "extra_authorize_params": {"prompt": "consent"}},
            "cookie": {"secret": _secret(), "secure": False},
            "session": session,
            "upstreams": [{"path": "/u/", "url": f"unix:{self.socket_path}", "strip_prefix": True},
                          {"path": "/", "url": f"http://127.0.0.1:{self.tcp_port}"}],
            "logging": {"level": "warning"},
            "workers": self.workers,
        }
        self.config_path = self.stack.root / "authproxy.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.proxy = await self.stack.spawn("authproxy", [sys.executable, "-m", "proxy", "--config",
                                                          str(self.config_path)],
                                            cwd=self.stack_source, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                                        "PYTHONPATH": str(self.stack_source)})
        await self.wait_workers()

    @property
    def stack_source(self) -> Path:
        return HERE.parent

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.stop()
        await self.stack.close()

    # -- the processes -------------------------------------------------------------------------------------

    async def _upstream_tcp(self) -> Proc:
        proc = await self.stack.spawn("upstream-tcp", [sys.executable, str(HERE / "soak_upstream.py"),
                                                       "--port", str(self.tcp_port)])
        await wait_port(self.tcp_port, proc, "upstream-tcp")
        return proc

    def worker_pids(self) -> list[int]:
        """authproxy's workers: the supervisor's children except the host coordinator."""
        assert self.proxy is not None
        found: list[int] = []
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{self.proxy.pid}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    with contextlib.suppress(FileNotFoundError):
                        if b"proxy.coordinator" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            found.append(int(pid))
        return sorted(found)

    def process_pids(self) -> dict[str, int]:
        """Every authproxy process by role: supervisor, coordinator, worker-N."""
        assert self.proxy is not None
        pids = {"supervisor": self.proxy.pid}
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{self.proxy.pid}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    with contextlib.suppress(FileNotFoundError):
                        if b"proxy.coordinator" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            pids["coordinator"] = int(pid)
        for i, pid in enumerate(self.worker_pids()):
            pids[f"worker-{i}"] = pid
        return pids

    def resources(self) -> dict[str, dict[str, int]]:
        """RSS (KiB) and open file descriptors of each authproxy process now."""
        out: dict[str, dict[str, int]] = {}
        for role, pid in self.process_pids().items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:"))
                out[role] = {"pid": pid, "rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
        return out

    async def wait_workers(self) -> float:
        """Until ``workers`` workers run and /ready answers on fresh connections; returns the seconds it took."""
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            while time.monotonic() - started < WORKER_RESTART_LIMIT:
                assert self.proxy is not None
                if self.proxy.proc.returncode is not None:
                    raise RuntimeError(f"authproxy exited:\n{self.proxy.log_tail()}")
                if len(self.worker_pids()) == self.workers:
                    try:
                        statuses = []
                        for _ in range(6):
                            async with client.get(self.url + "/ready") as resp:
                                statuses.append(resp.status)
                        if all(s == 200 for s in statuses):
                            return time.monotonic() - started
                    except aiohttp.ClientError:
                        pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"authproxy's workers were not all ready in {WORKER_RESTART_LIMIT}s:\n"
                           f"{self.proxy.log_tail() if self.proxy else ''}")

    # -- faults --------------------------------------------------------------------------------------------

    async def restart_upstream(self, down_for: float) -> None:
        assert self.upstream_tcp is not None
        await self.stack.stop(self.upstream_tcp)
        self.stack.procs.remove(self.upstream_tcp)
        await asyncio.sleep(down_for)
        self.upstream_tcp = await self._upstream_tcp()

    async def redis_down(self, down_for: float) -> None:
        """kill -9 redis-server; start it again (same port, same append-only file) after ``down_for``."""
        assert self.redis is not None
        await self.redis.kill()
        await asyncio.sleep(down_for)
        await self.redis.start()

    def reload(self, config: dict[str, Any] | str) -> None:
        """Write ``config`` (a dict, or raw text for a broken file) and send SIGHUP to the supervisor."""
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        self.config_path.write_text(text)
        assert self.proxy is not None
        os.kill(self.proxy.pid, signal.SIGHUP)

    async def kill_worker(self) -> float:
        """SIGKILL one worker; returns the seconds until the supervisor has a full set again."""
        victims = self.worker_pids()
        os.kill(victims[0], signal.SIGKILL)
        started = time.monotonic()
        while victims[0] in self.worker_pids():
            await asyncio.sleep(0.05)
        return time.monotonic() - started + await self.wait_workers()


async def _wait_unix(path: Path, proc: Proc) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.proc.returncode is not None:
            raise RuntimeError(f"the unix-socket upstream exited:\n{proc.log_tail()}")
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the unix-socket upstream did not listen")


def _secret() -> str:
    import base64
    return base64.urlsafe_b64encode(os.urandom(32)).decode()
