"""``python -m demo [--smoke] [--idp-port N] [--app-port N] [--proxy-port N]``: see the package docstring.

Run it from the repository root, after `npm ci` in tests/idp and `pip install -e '.[test]'` (``demo/setup-and-run``
does both). Ctrl-C or SIGTERM stops all three servers; the exit status is 0 then, and 1 if something failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

from demo.app import start_demo_app
from tests.support.browserless import login_via_http, logout_via_http
from tests.support.fixtures import CLIENT_ID, client_metadata
from tests.support.idp import IdPError, start_idp

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_PORTS = {"idp": 9000, "app": 8080, "proxy": 4180}
SMOKE_USER = "alice"

# Seconds to wait for authproxy to answer /ready 200 (it loads the provider's metadata in the background).
READY_TIMEOUT = 30.0
# Seconds between /ready polls.
READY_POLL = 0.1
# Seconds authproxy gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
# Time limit for each request the smoke check makes.
SMOKE_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


class DemoError(Exception):
    """The demo could not start or its smoke check failed; the message says why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=(
        "Run oidc-provider, a demo app and authproxy on 127.0.0.1; open the proxy's URL and sign in with any "
        "username and password."))
    for name, what in (("idp", "the OpenID provider"), ("app", "the demo app"), ("proxy", "authproxy")):
        parser.add_argument(f"--{name}-port", type=int, default=DEFAULT_PORTS[name],
                            help=f"port of {what} on {HOST} (default %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="start everything, sign in once over HTTP, check the greeting, print OK and exit")
    return parser.parse_args(argv)


def check_ports_free(ports: dict[str, int]) -> None:
    """Fail early, naming the flag to change, rather than with a bind error from one of three processes."""
    if len(set(ports.values())) != len(ports):
        raise DemoError(f"the ports must differ: {ports}")
    for what, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                raise DemoError(f"port {port} on {HOST} is in use; pick another with --{what}-port") from None


def proxy_config(*, proxy_url: str, issuer: str, app_url: str, port: int) -> dict:
    """authproxy's configuration for the demo; the two secrets come from the environment, as in production."""
    return {
        "listen": f"{HOST}:{port}",
        "public_url": proxy_url,
        "provider": {
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "client_secret": "${CLIENT_SECRET}",
            # offline_access: the provider issues a refresh token; prompt=consent: oidc-provider only grants
            # offline_access after a consent screen.
            "scopes": ["openid", "email", "profile", "offline_access"],
            "extra_authorize_params": {"prompt": "consent"},
        },
        # Plain http on loopback: a Secure cookie would never come back.
        "cookie": {"secret": "${COOKIE_SECRET}", "secure": False},
        "upstreams": [{"path": "/", "url": app_url}],
    }


def new_cookie_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


async def start_proxy(config_path: Path, env: dict[str, str], log_file: Path | None) -> asyncio.subprocess.Process:
    """``python -m proxy --config FILE`` from the repository root; its log goes to our stderr or to ``log_file``."""
    stderr = log_file.open("wb") if log_file else None
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--config", str(config_path), cwd=REPO_ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            # Its own session: a Ctrl-C in the terminal reaches only us, and we stop it in order.
            start_new_session=True)
    finally:
        if stderr:
            stderr.close()


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def wait_ready(proxy_url: str, proc: asyncio.subprocess.Process) -> None:
    """Until authproxy answers ``/ready`` 200, i.e. it listens and has the provider's metadata."""
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
        while True:
            if proc.returncode is not None:
                raise DemoError(f"authproxy exited with status {proc.returncode} before it was ready")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with client.get(proxy_url + "/ready") as resp:
                    if resp.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(f"authproxy did not answer {proxy_url}/ready with 200 within {READY_TIMEOUT:.0f}s")
            await asyncio.sleep(READY_POLL)


async def smoke(proxy_url: str) -> None:
    """Sign in as SMOKE_USER over plain HTTP, check the app's greeting, then sign out."""
    jar = aiohttp.CookieJar(unsafe=True)   # the default jar ignores cookies for IP addresses
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=SMOKE_HTTP_TIMEOUT) as client:
        result = await login_via_http(client, proxy_url + "/", username=SMOKE_USER, password="any password")
        if result.status != 200 or f"Hello, {SMOKE_USER}!" not in result.body_text:
            raise DemoError(f"after signing in, {result.url} answered {result.status} without the greeting:\n"
                            f"{result.body_text[:2000]}")
        if "Bearer " not in result.body_text or "chars)" not in result.body_text:
            raise DemoError("the demo page does not show the shortened Bearer token it received")
        signed_out = await logout_via_http(client, proxy_url + "/oauth2/sign_out")
        if signed_out.status != 200 or "signed out" not in signed_out.body_text:
            raise DemoError(f"signing out ended at {signed_out.url} with {signed_out.status}")


def banner(urls: dict[str, str], config_path: Path) -> str:
    return "\n".join([
        "",
        "authproxy demo is running.",
        "",
        f"  Open {urls['proxy']}/ in a browser.",
        f"  Sign in with any username and any password (e.g. {SMOKE_USER} / any password), then allow the consent.",
        "",
        f"  provider  {urls['idp']}  (oidc-provider, development login)",
        f"  app       {urls['app']}  (the app behind the proxy; open it directly to see it without a login)",
        f"  proxy     {urls['proxy']}  (config: {config_path})",
        "",
        "Press Ctrl-C to stop.",
        "",
    ])


async def run(args: argparse.Namespace) -> None:
    ports = {"idp": args.idp_port, "app": args.app_port, "proxy": args.proxy_port}
    check_ports_free(ports)
    urls = {name: f"http://{HOST}:{port}" for name, port in ports.items()}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    client_secret = secrets.token_urlsafe(32)
    async with contextlib.AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="authproxy-demo-")))
        client = client_metadata(urls["proxy"] + "/oauth2/callback",
                                 post_logout_redirect_uri=urls["proxy"] + "/oauth2/signed_out",
                                 client_secret=client_secret)
        idp = await start_idp(clients=[client], port=ports["idp"])
        stack.push_async_callback(idp.stop)
        stack.push_async_callback((await start_demo_app(HOST, ports["app"])).cleanup)
        config_path = workdir / "config.yaml"
        config = proxy_config(proxy_url=urls["proxy"], issuer=idp.issuer, app_url=urls["app"], port=ports["proxy"])
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, "CLIENT_SECRET": client_secret, "COOKIE_SECRET": new_cookie_secret()}
        log_file = workdir / "authproxy.log" if args.smoke else None
        proc = await start_proxy(config_path, env, log_file)
        stack.push_async_callback(stop_process, proc)
        try:
            await wait_ready(urls["proxy"], proc)
            if args.smoke:
                await smoke(urls["proxy"])
                print("OK", flush=True)
                return
        except DemoError:
            if log_file:
                print(f"authproxy's log:\n{log_file.read_text(errors='replace')}", file=sys.stderr)
            raise
        print(banner(urls, config_path), flush=True)
        exited = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        exited.cancel()
        if proc.returncode is not None and not stop.is_set():
            raise DemoError(f"authproxy exited with status {proc.returncode}")
        print("Stopping the demo...", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except (DemoError, IdPError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
