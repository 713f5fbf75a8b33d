"""A real Caddy (Debian's ``caddy``, 2.6) on a free loopback port, from a generated Caddyfile.

Like ``nginx.py``: one foreground process with its state (autosave, certificates it never makes) in its own
temp dir, no admin endpoint, no automatic HTTPS; ``stop()`` ends it and removes the dir.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
# Global options for a test instance: nothing listens but the sites, nothing reaches out.
GLOBAL = "{\n\tadmin off\n\tauto_https off\n\tskip_install_trust\n}\n"


@dataclass
class Caddy:
    root: Path
    proc: asyncio.subprocess.Process

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


async def start_caddy(port: int, sites: str) -> Caddy:
    """Caddy serving ``sites`` (site blocks, listening on ``port``), with the test's global options first."""
    root = Path(tempfile.mkdtemp(prefix="authproxy-caddy-"))
    (root / "Caddyfile").write_text(GLOBAL + sites)
    env = {**os.environ, "HOME": str(root), "XDG_DATA_HOME": str(root), "XDG_CONFIG_HOME": str(root)}
    with open(root / "caddy.log", "wb") as log:          # a file, not a pipe: nobody reads it while it runs
        proc = await asyncio.create_subprocess_exec(CADDY, "run", "--config", str(root / "Caddyfile"), "--adapter",
                                                    "caddyfile", env=env, cwd=root,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=log)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return Caddy(root=root, proc=proc)
        except OSError:
            if proc.returncode is not None:
                err = (root / "caddy.log").read_text(errors="replace")
                shutil.rmtree(root, ignore_errors=True)
                raise RuntimeError(f"caddy exited: {err[-2000:]}") from None
            await asyncio.sleep(0.05)
    proc.terminate()
    raise RuntimeError("caddy did not start")
