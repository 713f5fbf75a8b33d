"""A real redis-server (Debian package) on a free loopback port, with its own config and directory.

No persistence by default; ``persist=True`` turns on the append-only file so a restart keeps data
(for the kill-and-restart tests).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    port: int
    dir: Path
    persist: bool
    proc: asyncio.subprocess.Process | None = None
    password: str | None = None
    tls: tuple[Path, Path] | None = None            # (certificate, key): serve TLS only, on ``port``

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls[0]), "--tls-key-file",
                str(self.tls[1]), "--tls-ca-cert-file", str(self.tls[0]), "--tls-auth-clients", "no"] \
            if self.tls else ["--port", str(self.port)]
        args = [REDIS_SERVER, *port, "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.DEVNULL)
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if self.proc.returncode is not None:
                    raise RuntimeError((self.dir / "redis.log").read_text()) from None
                await asyncio.sleep(0.025)
        raise RuntimeError("redis-server did not start")

    async def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would."""
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def start_redis(port: int, *, persist: bool = False, password: str | None = None,
                      tls: tuple[Path, Path] | None = None) -> RedisServer:
    """``tls``: (certificate, key) PEM files; the server then speaks only TLS (``url`` is rediss://)."""
    server = RedisServer(port=port, dir=Path(tempfile.mkdtemp(prefix="authproxy-redis-")), persist=persist,
                         password=password, tls=tls)
    await server.start()
    return server


async def start_sentinel(port: int, master: RedisServer, name: str = "mymaster") -> RedisServer:
    """A redis-server in sentinel mode watching ``master`` under ``name``."""
    server = RedisServer(port=port, dir=Path(tempfile.mkdtemp(prefix="authproxy-sentinel-")), persist=False)
    conf = server.dir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {server.dir}\n"
                    f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
                    f"sentinel down-after-milliseconds {name} 1000\n")
    server.proc = await asyncio.create_subprocess_exec(REDIS_SERVER, str(conf), "--sentinel",
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
    await _wait_port(server)
    return server


async def start_cluster(ports: list[int]) -> list[RedisServer]:
    """Three (or more) masters joined into a Redis Cluster with redis-cli, no replicas."""
    nodes = []
    for port in ports:
        node = RedisServer(port=port, dir=Path(tempfile.mkdtemp(prefix="authproxy-cluster-")), persist=False)
        node.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node.dir), "--save", "",
            "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--protected-mode", "no", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await _wait_port(node)
        nodes.append(node)
    create = await asyncio.create_subprocess_exec(
        shutil.which("redis-cli") or "/usr/bin/redis-cli", "--cluster", "create",
        *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0", "--cluster-yes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await create.communicate()
    if create.returncode != 0:
        raise RuntimeError(out.decode())
    for _ in range(100):
        probe = await asyncio.create_subprocess_exec(
            shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p", str(ports[0]), "cluster", "info",
            stdout=asyncio.subprocess.PIPE)
        info, _ = await probe.communicate()
        if b"cluster_state:ok" in info:
            return nodes
        await asyncio.sleep(0.1)
    raise RuntimeError("the cluster never reached cluster_state:ok")


async def _wait_port(server: RedisServer) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.025)
    raise RuntimeError(f"redis on {server.port} did not start")
