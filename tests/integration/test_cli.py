"""The command line as an operator meets it: real ``python -m proxy`` and ``python -m demo`` subprocesses.

What only a real process shows: exit statuses, what goes to stdout and stderr, that a bad configuration stops
the process before it listens, the start-up and access log lines, that no token, code, cookie or secret ever
reaches the log, and that the demo starts, signs a user in and stops cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import yaml

import proxy
from tests.support.browserless import login_via_http
from tests.support.echo import header_values, start_echo
from tests.support.fixtures import CLIENT_ID, IdPFactory, client_metadata
from tests.support.ports import free_port, is_free

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "config.example.yaml"
# Seconds a CLI call that only parses, validates or prints may take.
CLI_TIMEOUT = 30
# Seconds for the proxy to answer /ready, and for the provider's metadata to load after the provider appears.
READY_TIMEOUT = 20.0
# Seconds for the demo's smoke run (three servers, a login and a logout), and for it to stop on a signal.
DEMO_TIMEOUT = 120
DEMO_STOP_TIMEOUT = 30
HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


def new_secret() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without AUTHPROXY_* (a configuration from the environment would change what runs)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUTHPROXY_")}
    return {**env, **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO_ROOT, env=env or clean_env(),
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)


# -- commands that do not serve ----------------------------------------------------------------


def test_version_prints_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"authproxy {proxy.__version__}\n"


def test_check_config_accepts_the_example_with_its_secrets_in_the_environment():
    env = clean_env(CLIENT_SECRET="example-client-secret", COOKIE_SECRET=new_secret())
    result = run_cli("--check-config", str(EXAMPLE_CONFIG), env=env)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


BAD_CONFIG = """\
listen: "localhost"
public_url: "ftp://app.example.com"
provider:
  issuer: "https://idp.example.com"
  client_secret: "${CLIENT_SECRET}"
cookie:
  secret: "dG9vLXNob3J0"
  samesite: sometimes
upstreams:
  - path: "api"
    url: "127.0.0.1:8080"
colour: blue
"""
# Every problem in BAD_CONFIG, by the path the report must name.
BAD_PATHS = ("listen", "public_url", "provider.client_id", "cookie.secret", "cookie.samesite",
             "upstreams[0].path", "upstreams[0].url", "colour")


def problem_paths(stderr: str) -> list[str]:
    """The paths of the ``  - PATH: message`` lines of a configuration report."""
    return [match[1] for match in re.finditer(r"^  - (\S+?): ", stderr, re.MULTILINE)]


def test_check_config_lists_every_problem_with_its_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG)
    result = run_cli("--check-config", str(bad), env=clean_env(CLIENT_SECRET="unused"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert sorted(problem_paths(result.stderr)) == sorted(BAD_PATHS), result.stderr
    assert f"{bad}: {len(BAD_PATHS)} configuration problems:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "dG9vLXNob3J0" not in result.stderr      # a secret's value is never repeated back


def test_secret_prints_32_random_bytes_in_base64():
    first, second = run_cli("secret"), run_cli("secret")
    assert first.returncode == 0 and second.returncode == 0
    for result in (first, second):
        text = result.stdout.strip()
        assert 43 <= len(text) <= 44
        assert len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))) == 32
    assert first.stdout != second.stdout


def test_console_script_runs_the_same_main():
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("authproxy", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if found is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "the authproxy console script is not installed (pip install -e .)")
    result = subprocess.run([found, "secret"], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=clean_env())
    assert result.returncode == 0
    assert len(base64.urlsafe_b64decode(result.stdout.strip() + "==")) == 32


@pytest.mark.parametrize("given_as", ["--config", "AUTHPROXY_CONFIG"])
def test_bad_config_stops_the_proxy_before_it_listens(tmp_path, given_as):
    port = free_port()
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG.replace('listen: "localhost"', f'listen: "127.0.0.1:{port}"'))
    if given_as == "--config":
        result = run_cli("--config", str(bad), env=clean_env(CLIENT_SECRET="unused"))
    else:
        result = run_cli(env=clean_env(CLIENT_SECRET="unused", AUTHPROXY_CONFIG=str(bad)))
    assert result.returncode == 2
    assert f"{bad}: " in result.stderr
    assert "upstreams[0].url" in problem_paths(result.stderr)
    assert "listening on" not in result.stderr
    assert "Traceback" not in result.stderr
    assert is_free(port)


# -- the proxy as a process, against the real provider ----------------------------------------------


class ProxyProcess:
    """``python -m proxy --config FILE`` with its stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._reader = asyncio.create_task(self._read(proc.stderr))

    @classmethod
    async def start(cls, config_path: Path, env: dict[str, str]) -> ProxyProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--config", str(config_path), cwd=REPO_ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    async def stop(self) -> int:
        """SIGTERM, as an orchestrator stops it; the exit status, once every log line is read."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        return self.proc.returncode


@contextlib.asynccontextmanager
async def running_proxy(config_path: Path, env: dict[str, str]) -> AsyncIterator[ProxyProcess]:
    process = await ProxyProcess.start(config_path, env)
    try:
        yield process
    finally:
        await process.stop()


class ProxyRequests:
    """Every request a client session sent to the proxy, with the response headers it got back."""

    def __init__(self, proxy_port: int) -> None:
        self.port = proxy_port
        self.sent: list[tuple[str, str]] = []           # (method, path) in order
        self.set_cookies: list[str] = []                # every Set-Cookie value the proxy sent
        self.locations: list[str] = []                  # every Location the proxy sent
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._on_end)

    async def _on_end(self, session: object, context: object, params: aiohttp.TraceRequestEndParams) -> None:
        if params.url.port != self.port:
            return
        self.sent.append((params.method, params.url.path))
        headers = params.response.headers
        self.set_cookies += headers.getall("Set-Cookie", [])
        self.locations += headers.getall("Location", [])


async def wait_ready(client: aiohttp.ClientSession, url: str, process: ProxyProcess) -> None:
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    while True:
        assert process.proc.returncode is None, f"the proxy exited early:\n{process.stderr}"
        async with client.get(url + "/ready") as resp:
            if resp.status == 200:
                return
            assert resp.status == 503
        assert asyncio.get_running_loop().time() < deadline, f"never ready:\n{process.stderr}"
        await asyncio.sleep(0.1)


def cookie_values(set_cookie_headers: list[str]) -> list[str]:
    values = []
    for header in set_cookie_headers:
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        values += [morsel.value for morsel in cookie.values() if morsel.value]
    return values


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_proxy_process_logs_start_up_and_each_request_and_never_a_secret(idp_factory: IdPFactory, tmp_path,
                                                                               level: str):
    proxy_port, idp_port = free_port(), free_port()
    public = f"http://127.0.0.1:{proxy_port}"
    client_secret, cookie_secret = new_secret(), new_secret()
    echo = await start_echo(free_port())
    config = {
        "listen": f"127.0.0.1:{proxy_port}",
        "public_url": public,
        "provider": {"issuer": f"http://127.0.0.1:{idp_port}", "client_id": CLIENT_ID,
                     "client_secret": "${CLIENT_SECRET}", "scopes": ["openid", "email", "profile", "offline_access"],
                     "extra_authorize_params": {"prompt": "consent"}},
        "cookie": {"secret": "${COOKIE_SECRET}", "secure": False},
        "upstreams": [{"path": "/", "url": echo.url}],
        "logging": {"level": level},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = clean_env(CLIENT_SECRET=client_secret, COOKIE_SECRET=cookie_secret)
    requests = ProxyRequests(proxy_port)
    jar = aiohttp.CookieJar(unsafe=True)
    try:
        async with running_proxy(config_path, env) as process, \
                aiohttp.ClientSession(cookie_jar=jar, trace_configs=[requests.trace]) as client:
            # The provider is not up yet: the proxy is alive but not ready.
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with client.get(public + "/ping") as resp:
                        assert resp.status == 200 and await resp.text() == "OK"
                        break
                assert process.proc.returncode is None, process.stderr
                await asyncio.sleep(0.1)
            async with client.get(public + "/ready") as resp:
                assert resp.status == 503
            meta = client_metadata(public + "/oauth2/callback", post_logout_redirect_uri=public + "/oauth2/signed_out",
                                   client_secret=client_secret)
            await idp_factory(clients=[meta], port=idp_port)
            await wait_ready(client, public, process)

            async with client.get(public + "/api/things", headers=JSON, allow_redirects=False) as resp:
                assert resp.status == 401
            result = await login_via_http(client, public + "/html/cli?x=1", username="carol")
            assert result.status == 200 and "carol" in result.body_text
            async with client.get(public + "/after", headers=JSON) as resp:
                assert resp.status == 200
            async with client.get(public + "/oauth2/sign_out", allow_redirects=False) as resp:
                assert resp.status == 302
            exit_status = await process.stop()
    finally:
        await echo.close()

    stderr = process.stderr
    assert exit_status == 0, stderr
    assert "Traceback" not in stderr

    start_lines = [line for line in process.lines if "listening on" in line]
    assert len(start_lines) == 1, stderr
    assert f"127.0.0.1:{proxy_port}" in start_lines[0]
    assert f"http://127.0.0.1:{idp_port}" in start_lines[0]
    assert echo.url in start_lines[0]

    access = [re.search(r"authproxy\.access: (\S+) (\S+) (\d{3}) (\d+\.\d+)ms ", line) for line in process.lines]
    logged = [(m[1], m[2]) for m in access if m]
    assert Counter(logged) == Counter(requests.sent), stderr
    statuses = {(m[1], m[2]): m[3] for m in access if m}
    assert statuses[("GET", "/ping")] == "200"
    assert statuses[("GET", "/api/things")] == "401"
    assert statuses[("GET", "/after")] == "200"
    assert statuses[("GET", "/oauth2/sign_out")] == "302"

    # What must never be logged: the tokens the upstream saw, the cookies, the code, the secrets.
    bearer = [value for record in echo.seen for value in header_values(record, "Authorization")]
    assert bearer and all(value.startswith("Bearer ") for value in bearer)
    callback = next(url for url in result.visited if urlsplit(url).path == "/oauth2/callback")
    query = parse_qs(urlsplit(callback).query)
    id_token_hints = [hint for location in requests.locations
                      for hint in parse_qs(urlsplit(location).query).get("id_token_hint", [])]
    assert id_token_hints, requests.locations
    never_logged = {
        "access token": {value.removeprefix("Bearer ") for value in bearer},
        "cookie value": set(cookie_values(requests.set_cookies)),
        "authorization code": set(query["code"]),
        "state": set(query["state"]),
        "ID token": set(id_token_hints),
        "client secret": {client_secret},
        "cookie secret": {cookie_secret},
    }
    assert never_logged["cookie value"], requests.set_cookies
    for what, values in never_logged.items():
        for value in values:
            assert value not in stderr, f"the log shows a {what}"


# -- the demo ---------------------------------------------------------------------------------------


def demo_ports() -> list[str]:
    return ["--idp-port", str(free_port()), "--app-port", str(free_port()), "--proxy-port", str(free_port())]


def test_demo_smoke_run_signs_in_and_passes():
    result = subprocess.run([sys.executable, "-m", "demo", "--smoke", *demo_ports()], cwd=REPO_ROOT, env=clean_env(),
                            capture_output=True, text=True, timeout=DEMO_TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "OK"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_demo_stops_all_three_servers_on_a_signal(signum):
    ports = demo_ports()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "demo", *ports, cwd=REPO_ROOT, env=clean_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        printed = ""
        while "Press Ctrl-C to stop." not in printed:
            line = await asyncio.wait_for(proc.stdout.readline(), DEMO_TIMEOUT)
            assert line, "the demo exited before it was ready"
            printed += line.decode()
        proxy_url = f"http://127.0.0.1:{ports[-1]}/"
        assert f"Open {proxy_url} in a browser." in printed
        assert "any username and any password" in printed
        proc.send_signal(signum)
        _, stderr = await asyncio.wait_for(proc.communicate(), DEMO_STOP_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    for port in ports[1::2]:
        assert is_free(int(port)), f"port {port} still in use after the demo stopped"


def test_config_schema_is_json_schema_of_every_top_level_key():
    import json
    import subprocess
    import sys

    from proxy.config import Config
    result = subprocess.run([sys.executable, "-m", "proxy", "config-schema"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) == set(Config.model_fields)
    assert set(schema["required"]) >= {"public_url", "provider", "cookie", "upstreams"}


async def test_ping_prints_what_is_not_ready_and_ready_decides_the_exit_with_it(idp_factory: IdPFactory, tmp_path):
    """``authproxy ping`` exits by /ping (the container's liveness) and prints /ready's checks; with
    ``--ready`` it exits by them. The provider starts only after the proxy: not ready, then ready."""
    proxy_port, idp_port = free_port(), free_port()
    public = f"http://127.0.0.1:{proxy_port}"
    config = {"listen": f"127.0.0.1:{proxy_port}", "public_url": public,
              "provider": {"issuer": f"http://127.0.0.1:{idp_port}", "client_id": CLIENT_ID,
                           "client_secret": "${CLIENT_SECRET}"},
              "cookie": {"secret": new_secret(), "secure": False},
              "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}]}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    client_secret = new_secret()
    url = f"--url={public}/ping"
    async with running_proxy(config_path, clean_env(CLIENT_SECRET=client_secret)) as process, \
            aiohttp.ClientSession() as client:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with client.get(public + "/ping"):
                    break
            assert process.proc.returncode is None, process.stderr
            await asyncio.sleep(0.1)
        alive = await asyncio.to_thread(run_cli, "ping", url)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert alive.stdout.splitlines() == [
            f"alive: {public}/ping answered 200",
            "ready: no (503): provider_metadata not loaded yet, jwks waiting for the provider metadata",
            "  provider_metadata: not loaded yet", "  jwks: waiting for the provider metadata"]
        not_ready = await asyncio.to_thread(run_cli, "ping", "--ready", url)
        assert not_ready.returncode == 1 and "ready: no (503)" in not_ready.stdout

        await idp_factory(clients=[client_metadata(public + "/oauth2/callback", client_secret=client_secret)],
                          port=idp_port)
        await wait_ready(client, public, process)
        ready = await asyncio.to_thread(run_cli, "ping", "--ready", url)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        assert ready.stdout.splitlines()[1:] == ["ready: yes (200)", "  provider_metadata: ok", "  jwks: ok"]
    gone = await asyncio.to_thread(run_cli, "ping", url)                   # nothing listens any more
    assert gone.returncode == 1 and gone.stdout.startswith("alive: no:")
