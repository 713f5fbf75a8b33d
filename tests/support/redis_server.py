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

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
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
                    raise RuntimeError((self.dir / "redis.log").read_text())
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


async def start_redis(port: int, *, persist: bool = False) -> RedisServer:
    server = RedisServer(port=port, dir=Path(tempfile.mkdtemp(prefix="authproxy-redis-")), persist=persist)
    await server.start()
    return server
