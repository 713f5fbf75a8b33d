"""authproxy as a real process (``python -m proxy --config FILE``), for what in-process tests cannot show:
start-up, signals, logs and the process's own memory."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ProxyProcess:
    url: str
    proc: asyncio.subprocess.Process
    config_path: Path
    stderr_lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task | None = None

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def peak_rss_kib(self) -> int:
        """VmHWM: the most resident memory the process ever had (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            await self._reader
        self.config_path.unlink(missing_ok=True)
        return self.proc.returncode


async def start_proxy_process(data: dict[str, Any], *, env: dict[str, str] | None = None,
                              ready_path: str = "/ready", direct_url: str | None = None,
                              ssl: Any = True) -> ProxyProcess:
    """Start ``python -m proxy`` and wait for ``ready_path`` on ``direct_url`` (default: public_url);
    ``ssl``: aiohttp's ``ssl`` argument for that check (an ``ssl.SSLContext`` trusting a test CA)."""
    fd, name = tempfile.mkstemp(suffix=".yaml", prefix="authproxy-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(data, fh)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--config", name, cwd=REPO, env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    running = ProxyProcess(url=data["public_url"], proc=proc, config_path=Path(name))

    async def read() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            running.stderr_lines.append(line.decode(errors="replace"))
    running._reader = asyncio.create_task(read())
    async with aiohttp.ClientSession() as client:
        for _ in range(300):
            if proc.returncode is not None:
                break
            try:
                async with client.get((direct_url or running.url) + ready_path, ssl=ssl) as resp:
                    if resp.status == 200:
                        return running
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    await running.stop(signal.SIGKILL)
    raise RuntimeError(f"authproxy did not become ready:\n{running.stderr}")
