"""The servers a benchmark starts — nginx, oidc-provider, authproxy, Apache with mod_auth_openidc — and how they stop.

Everything listens on 127.0.0.1, on a port the OS just said was free, and lives in one temporary directory
(configs, logs, the files nginx serves). A ``Stack`` is an async context manager: leaving it, by an error, a
Ctrl-C, a SIGTERM or the hard time limit of ``run_bounded``, stops every process it started (SIGTERM to the
process group, then SIGKILL) and deletes the directory. As a last resort for a benchmark killed outright, each
child is started under ``setpriv --pdeathsig KILL``, so the kernel kills it when the benchmark dies.

Run as root (as on the CI and development machines), nginx and Apache switch their workers to an
unprivileged user (nobody, www-data), which is why the temporary directory is world-readable; run as
another user, they keep that user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.idp import IdP, start_idp  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.nginx import PROLOGUE  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
SETPRIV = shutil.which("setpriv")
# Seconds a server gets to come up, and to go down after SIGTERM before SIGKILL.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# The relying parties registered at the provider: one client each, with its own redirect URI.
AUTHPROXY_CLIENT = ("authproxy-bench", "authproxy-bench-secret")
APACHE_CLIENT = ("apache-bench", "apache-bench-secret")
OIDC_SCOPES = ["openid", "email", "profile", "offline_access"]

T = TypeVar("T")


def run_bounded(main: Callable[[], Awaitable[T]], time_limit: float) -> T:
    """Run ``main()`` with a hard time limit; SIGTERM and SIGHUP cancel it like Ctrl-C, so its cleanup runs.

    SIGALRM a minute after the limit is the backstop if cleanup itself hangs (children die with us).
    """
    async def bounded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        try:
            async with asyncio.timeout(time_limit):
                return await main()
        except TimeoutError:
            print(f"\n*** hard time limit of {time_limit:.0f}s reached: stopped ***", file=sys.stderr)
            raise SystemExit(3) from None

    signal.alarm(int(time_limit) + 60)
    try:
        return asyncio.run(bounded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\n*** interrupted: every process was stopped ***", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.alarm(0)


@dataclass
class Proc:
    """A server process started by the stack, the leader of its own process group."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def source_version(source: Path = REPO) -> str:
    """The commit of the authproxy that runs, and whether its proxy/ has uncommitted changes."""
    import subprocess
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--", "proxy"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit or 'unknown'}{' + uncommitted changes in proxy/' if dirty else ''}"


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (Apache's and nginx's workers with their master)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:                       # field 5 of stat: pgrp
                pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (children that already exited are not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])          # fields 14 and 15 of stat: utime, stime
    return total / tick


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


async def wait_port(port: int, proc: Proc, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.returncode is not None:
            raise RuntimeError(f"{what} exited with {proc.proc.returncode}:\n{proc.log_tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f}s:\n{proc.log_tail()}")


@dataclass
class Stack:
    """A temporary directory and the processes started in it; ``async with Stack() as stack``."""

    keep: bool = False
    root: Path = field(init=False)
    procs: list[Proc] = field(default_factory=list)
    idps: list[IdP] = field(default_factory=list)

    async def __aenter__(self) -> Stack:
        self.root = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
        self.root.chmod(0o755)                    # nginx's and Apache's workers run as www-data / nobody
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await self.stop(proc)
        for idp in self.idps:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(idp.stop(), STOP_TIMEOUT + 5)
        if self.keep:
            print(f"(kept {self.root})", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def own_cpu_seconds(self) -> float:
        """CPU time of this benchmark: itself, its children that ended (wrk, curl) and every server it runs."""
        import resource
        used = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
        pids = [pid for proc in self.procs for pid in group_pids(proc.pid)]
        pids += [idp._proc.pid for idp in self.idps if idp._proc is not None]
        return used + cpu_seconds(pids)

    async def spawn(self, name: str, argv: list[str], *, cwd: Path | None = None,
                    env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` in its own process group, output to ``<root>/<name>.log``."""
        log = self.root / f"{name}.log"
        prefix = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []
        with open(log, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *prefix, *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        running = Proc(name, proc, log)
        self.procs.append(running)
        return running

    async def stop(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        if proc.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.proc.wait()
        with contextlib.suppress(ProcessLookupError):      # workers left behind by a master that died first
            os.killpg(proc.pid, signal.SIGKILL)

    # -- the servers --------------------------------------------------------------------------------------

    async def nginx(self, files: dict[str, int] | None = None) -> tuple[Proc, str]:
        """nginx, one worker: ``/tiny`` answers "ok\\n"; each of ``files`` (name → size, sparse) is served.
        It also listens on the unix socket ``<root>/nginx/nginx.sock`` (``nginx_socket()``)."""
        root = self.root / "nginx"
        (root / "www").mkdir(parents=True)
        (root / "tmp").mkdir()
        for name, size in (files or {}).items():
            with open(root / "www" / name, "wb") as fh:
                fh.truncate(size)
        port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        proc = await self.spawn("nginx", [NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)])
        await wait_port(port, proc, "nginx")
        return proc, f"http://127.0.0.1:{port}"

    async def nginx_proxy(self, routes: dict[str, str]) -> tuple[Proc, str]:
        """A second nginx as a plain streaming reverse proxy (no auth): each path prefix of ``routes``
        goes to its URL, bodies streamed both ways over pooled keep-alive connections: through 1 MiB of
        buffers in memory, never a temporary file (with ``proxy_buffering off`` nginx relays through one
        4 KiB buffer and managed a tenth of the direct rate). The reference for what a proxy written in C does
        on the same machine: the hop itself costs the kernel work of a second TCP connection."""
        root = self.root / "nginx-proxy"
        (root / "tmp").mkdir(parents=True)
        port = free_port()
        upstreams = "".join(f"  upstream u{i} {{ server {url.removeprefix('http://')}; keepalive 8; }}\n"
                            for i, url in enumerate(routes.values()))
        locations = "".join(f"    location {path} {{ proxy_pass http://u{i}; }}\n" for i, path in enumerate(routes))
        (root / "nginx.conf").write_text(NGINX_PROXY_CONF.format(root=root, port=port, upstreams=upstreams,
                                                                 locations=locations))
        proc = await self.spawn("nginx-proxy", [NGINX, "-c", str(root / "nginx.conf"), "-p", str(root)])
        await wait_port(port, proc, "nginx-proxy")
        return proc, f"http://127.0.0.1:{port}"

    async def haproxy(self, routes: dict[str, str]) -> tuple[Proc, str]:
        """HAProxy (Debian's) in HTTP mode as a plain reverse proxy (no auth) with ``option splice-auto``:
        it moves bodies between sockets with splice(2), as authproxy does, in C. Each path prefix of
        ``routes`` goes to its URL over keep-alive connections."""
        root = self.root / "haproxy"
        root.mkdir(parents=True)
        port = free_port()
        backends = "".join(f"backend b{i}\n  server s{i} {url.removeprefix('http://')}\n"
                           for i, url in enumerate(routes.values()))
        rules = "".join(f"  use_backend b{i} if {{ path_beg {path} }}\n"
                        for i, path in enumerate(routes) if path != "/")
        fallback = list(routes).index("/")
        (root / "haproxy.cfg").write_text(HAPROXY_CONF.format(port=port, rules=rules, fallback=fallback,
                                                              backends=backends))
        proc = await self.spawn("haproxy", [HAPROXY, "-f", str(root / "haproxy.cfg"), "-db"])
        await wait_port(port, proc, "haproxy")
        return proc, f"http://127.0.0.1:{port}"

    def nginx_socket(self) -> Path:
        """The unix socket the nginx of ``nginx()`` also listens on."""
        return self.root / "nginx" / "nginx.sock"

    async def splice_relay(self, routes: dict[int, str]) -> Proc:
        """bench/splice_relay.py: a layer-4 relay moving bytes with blocking splice(2), nothing else; each
        port of ``routes`` relays to its upstream (``host:port`` or ``unix:/path``). The floor of what
        any user-space proxy pays for the extra hop on this machine."""
        argv = [sys.executable, str(Path(__file__).resolve().parent / "splice_relay.py")]
        for port, upstream in routes.items():
            argv += ["--listen", f"{port}={upstream}"]
        proc = await self.spawn("splice-relay", argv)
        for port in routes:
            await wait_port(port, proc, "splice-relay")
        return proc

    async def idp(self, **options: Any) -> IdP:
        """oidc-provider (tests/idp) with the two relying parties' clients registered; see ``rp_ports``."""
        idp = await start_idp(**options)
        self.idps.append(idp)
        return idp

    async def authproxy(self, port: int, issuer: str, upstream_url: str, *, source: Path = REPO,
                        extra_upstreams: list[dict[str, str]] | None = None, launcher: list[str] | None = None,
                        **settings: Any) -> tuple[Proc, str]:
        """``python -m proxy --config FILE`` on ``port``, logging at warning (no access log).

        ``source`` is the checkout whose ``proxy`` package runs (this one by default); ``settings`` are
        top-level config keys added as they are, e.g. ``workers=2``; ``launcher`` replaces ``-m proxy``
        (a script that runs the proxy, e.g. ``bench/traced.py``, given ``--config FILE`` the same way).
        """
        client_id, client_secret = AUTHPROXY_CLIENT
        data = {
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
            "provider": {"issuer": issuer, "client_id": client_id, "client_secret": client_secret,
                         "scopes": OIDC_SCOPES, "extra_authorize_params": {"prompt": "consent"}},
            "cookie": {"secret": base64.urlsafe_b64encode(os.urandom(32)).decode(), "secure": False},
            "upstreams": [*(extra_upstreams or []), {"path": "/", "url": upstream_url}],
            "logging": {"level": "warning"},
            **settings,
        }
        config = self.root / f"authproxy-{port}.yaml"
        config.write_text(yaml.safe_dump(data))
        proc = await self.spawn(f"authproxy-{port}", [sys.executable, *(launcher or ["-m", "proxy"]), "--config",
                                                      str(config)],
                                cwd=source, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(source)})
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url + "/ready", proc, "authproxy")
        return proc, url

    async def apache(self, port: int, issuer: str, upstream_url: str, *,
                     refresh_before_expiry: int | None = None, extra_conf: str = "") -> tuple[Proc, str]:
        """Apache httpd (mpm_event, Debian's default thread counts) with mod_auth_openidc in front of the upstream.

        ``extra_conf`` is appended to the configuration: a directive given again there overrides the one
        above (e.g. the MPM's numbers), and a ``<Location>`` with its own ``ProxyPass`` goes before the
        ``ProxyPass /`` (mod_proxy tries a location's first)."""
        root = self.root / f"apache-{port}"
        (root / "run").mkdir(parents=True)
        client_id, client_secret = APACHE_CLIENT
        refresh = (f"OIDCRefreshAccessTokenBeforeExpiry {refresh_before_expiry}"
                   if refresh_before_expiry is not None else "")
        conf = APACHE_CONF.format(root=root, port=port, modules=APACHE_MODULES, issuer=issuer,
                                  client_id=client_id, client_secret=client_secret, upstream=upstream_url,
                                  scopes=" ".join(OIDC_SCOPES), refresh=refresh,
                                  passphrase=os.urandom(16).hex())
        (root / "apache.conf").write_text(conf + extra_conf)
        proc = await self.spawn(f"apache-{port}", [APACHE, "-f", str(root / "apache.conf"), "-DFOREGROUND"],
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"})
        await wait_port(port, proc, "apache2")
        return proc, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            if proc.proc.returncode is not None:
                break
            try:
                async with client.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready at {url}:\n{proc.log_tail()}")


def clients_for(authproxy_port: int, apache_port: int) -> list[dict[str, Any]]:
    """The provider's client registrations: authproxy's and Apache's, each with its own redirect URI."""
    def client(ids: tuple[str, str], redirect_uri: str) -> dict[str, Any]:
        return {"client_id": ids[0], "client_secret": ids[1], "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic"}
    return [client(AUTHPROXY_CLIENT, f"http://127.0.0.1:{authproxy_port}/oauth2/callback"),
            client(APACHE_CLIENT, f"http://127.0.0.1:{apache_port}/redirect_uri")]


NGINX_CONF = PROLOGUE.replace("{connections}", "1024") + """
  sendfile on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    listen unix:{root}/nginx.sock;
    root {root}/www;
    location = /tiny {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
"""

HAPROXY_CONF = """global
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  option http-keep-alive
  option splice-auto
frontend front
  bind 127.0.0.1:{port}
{rules}  default_backend b{fallback}
{backends}"""

NGINX_PROXY_CONF = PROLOGUE.replace("{connections}", "1024") + """
  keepalive_requests 1000000;
  client_max_body_size 0;
  proxy_http_version 1.1;
  proxy_buffering on;
  proxy_buffers 16 64k;
  proxy_busy_buffers_size 512k;
  proxy_max_temp_file_size 0;
  proxy_request_buffering off;
  client_body_buffer_size 1m;
  proxy_set_header Connection "";
{upstreams}  server {{
    listen 127.0.0.1:{port};
{locations}  }}
}}
"""

# Debian's mods-available/mpm_event.conf numbers, written out; keep-alive without a request cap, like the
# nginx above (Apache's default of 100 requests per connection would make wrk reconnect and measure that).
APACHE_CONF = """
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/run/apache.pid"
DefaultRuntimeDir "{root}/run"
Mutex file:{root}/run default
ErrorLog "{root}/error.log"
LogLevel warn
User www-data
Group www-data

LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule auth_openidc_module {modules}/mod_auth_openidc.so

StartServers            2
MinSpareThreads         25
MaxSpareThreads         75
ThreadLimit             64
ThreadsPerChild         25
MaxRequestWorkers       150
MaxConnectionsPerChild  0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5

OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {client_id}
OIDCClientSecret {client_secret}
OIDCRedirectURI http://127.0.0.1:{port}/redirect_uri
OIDCCryptoPassphrase {passphrase}
OIDCSessionType server-cache
OIDCCacheType shm
OIDCPKCEMethod S256
OIDCScope "{scopes}"
OIDCAuthRequestParams prompt=consent
OIDCPassClaimsAs headers
{refresh}

<Location />
  AuthType openid-connect
  Require valid-user
</Location>
ProxyPass /redirect_uri !
ProxyPass / {upstream}/
"""


async def login(url: str, cookie_names: Callable[[str], bool], *, username: str = "alice") -> str:
    """Sign ``username`` in through the relying party at ``url`` (the provider's login form, over HTTP).

    Returns a ``Cookie`` header value with the relying party's own cookies (those ``cookie_names`` accepts),
    as a browser would send them — the provider's ``op_*`` cookies share the host and are left out.
    Raises if the page at the end of the login is not the upstream's 200.
    """
    from tests.support.browserless import login_via_http

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        result = await login_via_http(client, url, username=username)
        if result.status != 200:
            raise RuntimeError(f"login at {url} ended on {result.url} with {result.status}: {result.body_text[:500]}"
                               f"\nvisited: {result.visited}")
        cookies = [f"{c.key}={c.value}" for c in client.cookie_jar if cookie_names(c.key)]
    if not cookies:
        raise RuntimeError(f"login at {url} left no session cookie")
    return "; ".join(cookies)


@dataclass
class Probe:
    status: int
    size: int           # bytes of the whole response, status line and headers included
    body: bytes


async def probe(url: str, cookie: str | None = None, timeout: float = 10.0) -> Probe:
    """One ``GET`` as wrk sends it (HTTP/1.1, no Accept, no User-Agent), read whole off the socket."""
    parts = url.removeprefix("http://").split("/", 1)
    host, port = parts[0].split(":")
    if host != "127.0.0.1":
        raise ValueError(f"probes only go to 127.0.0.1, not {host}")
    path = "/" + (parts[1] if len(parts) > 1 else "")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: {parts[0]}\r\nConnection: close\r\n"
        if cookie:
            head += f"Cookie: {cookie}\r\n"
        writer.write((head + "\r\n").encode("latin-1"))
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    return Probe(status=status, size=len(raw), body=raw.partition(b"\r\n\r\n")[2])
