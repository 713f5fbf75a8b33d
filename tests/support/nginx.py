"""A real nginx (Debian's nginx-light) on a free loopback port: static files, a balancer, or a given config."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# Every instance runs in the foreground with its files in its own temp dir.
PROLOGUE = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp;
  scgi_temp_path {root}/tmp;
"""

_CONF = PROLOGUE + """
  sendfile on;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    root {root}/www;
    location = /tiny {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
"""


@dataclass
class Nginx:
    url: str
    root: Path
    proc: asyncio.subprocess.Process

    @property
    def www(self) -> Path:
        return self.root / "www"

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


_BALANCER = PROLOGUE + """
  upstream replicas {{ {servers} }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_next_upstream off;
    }}
  }}
}}
"""


async def start_nginx(port: int, *, balance: list[int] | None = None) -> Nginx:
    """nginx serving files from ``www``, or, with ``balance``, a round-robin balancer over those ports."""
    root = Path(tempfile.mkdtemp(prefix="authproxy-nginx-"))
    root.chmod(0o755)                    # nginx's worker runs as an unprivileged user
    (root / "www").mkdir()
    (root / "tmp").mkdir()
    if balance:
        servers = " ".join(f"server 127.0.0.1:{p};" for p in balance)
        (root / "nginx.conf").write_text(_BALANCER.format(root=root, port=port, servers=servers, connections=1024))
    else:
        (root / "nginx.conf").write_text(_CONF.format(root=root, port=port, connections=256))
    return await _launch(root, port)


async def start_nginx_http(port: int, http_config: str) -> Nginx:
    """nginx with ``http_config`` (server and upstream blocks) inside its ``http { }``, e.g. a config from the docs."""
    root = Path(tempfile.mkdtemp(prefix="authproxy-nginx-"))
    root.chmod(0o755)
    (root / "www").mkdir()
    (root / "tmp").mkdir()
    (root / "nginx.conf").write_text(PROLOGUE.format(root=root, connections=256) + http_config + "\n}\n")
    return await _launch(root, port)


async def _launch(root: Path, port: int) -> Nginx:
    """Start nginx on ``root/nginx.conf`` and wait until ``port`` accepts."""
    proc = await asyncio.create_subprocess_exec(NGINX, "-c", str(root / "nginx.conf"), "-p", str(root),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return Nginx(url=f"http://127.0.0.1:{port}", root=root, proc=proc)
        except OSError:
            if proc.returncode is not None:
                raise RuntimeError(f"nginx exited: {(await proc.stderr.read()).decode()}") from None
            await asyncio.sleep(0.05)
    raise RuntimeError("nginx did not start")
