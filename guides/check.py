#!/usr/bin/env python3
"""Check the app guides in docs/apps.md for real: JupyterLab, Streamlit and Gradio behind authproxy.

For each app: a virtualenv of its own under ``~/.cache/authproxy-guides`` (made once, with ``pip install
<app>``), the real oidc-provider (tests/idp), the app started with the command docs/apps.md shows, and
``python -m proxy`` with the upstream configuration docs/apps.md shows (read from its ```yaml blocks
marked ``# guides: <app>``; only ports change). Then a user signs in through authproxy and uses the app:

- JupyterLab: the lab page; a kernel started over the REST API (with Jupyter's XSRF token) and a cell run over
  the kernel's WebSocket; a terminal's WebSocket; a file uploaded through the contents API; sign-out closes
  both WebSockets with 4401.
- Streamlit: the page rendered in chromium (over Streamlit's WebSocket); a file uploaded with the page's
  uploader; sign-out closes a WebSocket on ``/_stcore/stream`` with 4401.
- Gradio: the page in chromium; a function called from the page and its answer shown; a file uploaded;
  after sign-out the app's API answers 401.

Everything listens on 127.0.0.1; each app's check is bounded in time and stops everything it started.
Not part of ``python -m pytest`` (the three virtualenvs are about 1.2 GB): run it when a guide or one of the
apps changes. Exit status 1 when a check fails.

    python guides/check.py [jupyterlab] [streamlit] [gradio]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from stack import Proc, Stack, run_bounded, wait_port, wait_ready  # noqa: E402

from tests.support.browserless import login_via_http  # noqa: E402
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DOC = REPO / "docs" / "apps.md"
CACHE = Path(os.environ.get("AUTHPROXY_GUIDES_CACHE", Path.home() / ".cache" / "authproxy-guides"))
DOC_PORTS = {"jupyterlab": 8888, "streamlit": 8501, "gradio": 7860}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
TIME_LIMIT = 600.0
SESSION_ENDED = 4401


# -- what docs/apps.md says ------------------------------------------------------------------------------


def section(app: str) -> str:
    """The part of docs/apps.md under the app's heading."""
    text = DOC.read_text()
    title = {"jupyterlab": "JupyterLab", "streamlit": "Streamlit", "gradio": "Gradio"}[app]
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(app: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(app), flags=re.S)


def upstreams(app: str, port: int) -> list[dict[str, Any]]:
    """The guide's ``upstreams`` with the app's port in place of the one the page shows."""
    (block,) = [b for b in blocks(app, "yaml") if b.startswith(f"# guides: {app}\n")]
    data = yaml.safe_load(block)
    for upstream in data["upstreams"]:
        upstream["url"] = upstream["url"].replace(f":{DOC_PORTS[app]}", f":{port}")
    return list(data["upstreams"])


def shell_command(app: str, port: int) -> list[str]:
    (block,) = blocks(app, "sh")
    argv = shlex.split(block.replace("\\\n", " "))
    return [a.replace(str(DOC_PORTS[app]), str(port)) for a in argv]


# -- the pieces --------------------------------------------------------------------------------------------


def venv(app: str) -> Path:
    """The app's virtualenv's bin directory, made (once) with ``pip install <app>``."""
    root = CACHE / app
    bin_dir = root / "bin"
    if not (bin_dir / ".installed").exists():
        print(f"guides: installing {app} into {root} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", app], check=True)
        (bin_dir / ".installed").write_text(time.strftime("%Y-%m-%d"))
    return bin_dir


async def start_stack(stack: Stack, app: str, app_port: int) -> tuple[str, Proc]:
    """The real provider and authproxy (with the guide's upstream) on free ports; authproxy's URL."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await stack.idp(clients=[client_metadata(public + "/oauth2/callback",
                                                   post_logout_redirect_uri=public + "/oauth2/signed_out")])
    config = {
        "listen": f"127.0.0.1:{port}", "public_url": public,
        "provider": {"issuer": idp.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "cookie": {"secret": base64.urlsafe_b64encode(os.urandom(32)).decode(), "secure": False},
        "upstreams": upstreams(app, app_port),
        "logging": {"level": "info"},
    }
    path = stack.root / "authproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await stack.spawn("authproxy", [sys.executable, "-m", "proxy", "--config", str(path)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    await wait_ready(public + "/ready", proc, "authproxy")
    return public, proc


def cookie_header(jar: aiohttp.abc.AbstractCookieJar) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in jar)


async def expect_close(ws: aiohttp.ClientWebSocketResponse, within: float = 5.0) -> int:
    async with asyncio.timeout(within):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return int(ws.close_code or 0)


async def sign_in_browser(page: Any, issuer: str, username: str = "alice") -> None:
    """Answer oidc-provider's login and consent forms in the browser."""
    await page.locator("input[name=login]").fill(username)
    await page.locator("input[name=password]").fill("pw")
    await page.get_by_role("button", name="Sign-in").click()
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(lambda url: not url.startswith(issuer))


@asynccontextmanager
async def signed_in_page(stack: Stack, url: str) -> AsyncIterator[tuple[Any, Any]]:
    """chromium (loopback only) on ``url``, signed in at the provider; (context, page)."""
    from playwright.async_api import async_playwright
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            context.set_default_timeout(30_000)
            page = await context.new_page()
            await page.goto(url)
            await sign_in_browser(page, stack.idps[0].issuer)
            yield context, page
        finally:
            await browser.close()


async def session_cookies(context: Any) -> str:
    """The browser's authproxy cookies as a Cookie header, for a client beside the browser."""
    return "; ".join(f"{c['name']}={c['value']}" for c in await context.cookies() if c["name"].startswith("_authproxy"))


class Checks:
    """Each check printed as it passes; the first failure stops the app's run."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.passed: list[str] = []

    def ok(self, what: str, condition: bool, detail: object = "") -> None:
        if not condition:
            raise AssertionError(f"{self.app}: {what} FAILED {detail}")
        self.passed.append(what)
        print(f"  ok  {self.app}: {what}", flush=True)


# -- JupyterLab --------------------------------------------------------------------------------------------


def _jupyter_message(msg_type: str, content: dict[str, Any], session: str) -> dict[str, Any]:
    return {"header": {"msg_id": uuid.uuid4().hex, "username": "alice", "session": session, "msg_type": msg_type,
                       "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}


async def check_jupyterlab(stack: Stack, checks: Checks) -> None:
    bin_dir, port = venv("jupyterlab"), free_port()
    argv = shell_command("jupyterlab", port)
    argv[0] = str(bin_dir / argv[0])
    work = stack.root / "notebooks"
    work.mkdir()
    argv += ["--allow-root"] if os.geteuid() == 0 else []        # CI machines run as root; Jupyter asks for this
    jupyter = await stack.spawn("jupyterlab", [*argv, f"--ServerApp.root_dir={work}"],
                                env={**os.environ, "HOME": str(stack.root), "JUPYTER_RUNTIME_DIR": str(stack.root)})
    await wait_port(port, jupyter, "jupyterlab", timeout=60)
    public, _ = await start_stack(stack, "jupyterlab", port)
    origin = {"Origin": public}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        result = await login_via_http(browser, public + "/jupyter/lab")
        checks.ok("the lab page after signing in", result.status == 200 and "/jupyter/" in result.body_text,
                  result.status)
        xsrf = next((c.value for c in browser.cookie_jar if c.key == "_xsrf"), None)
        checks.ok("Jupyter's _xsrf cookie reached the browser through authproxy", xsrf is not None)
        headers = {"X-XSRFToken": xsrf or "", **origin}
        async with browser.post(public + "/jupyter/api/kernels", json={"name": "python3"}, headers=headers) as resp:
            kernel = await resp.json()
            checks.ok("a kernel started over the REST API", resp.status == 201, resp.status)
        session = uuid.uuid4().hex
        kernel_ws = await browser.ws_connect(f"{public}/jupyter/api/kernels/{kernel['id']}/channels"
                                             f"?session_id={session}".replace("http", "ws", 1), headers=origin)
        await kernel_ws.send_json(_jupyter_message("execute_request", {
            "code": "print(6 * 7)", "silent": False, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True}, session))
        output = ""
        async with asyncio.timeout(60):
            while "42" not in output:
                msg = await kernel_ws.receive_json()
                if msg.get("msg_type") == "stream":
                    output += msg["content"]["text"]
        checks.ok("a cell ran over the kernel's WebSocket", "42" in output)
        async with browser.post(public + "/jupyter/api/terminals", headers=headers) as resp:
            terminal = await resp.json()
            checks.ok("a terminal started", resp.status == 200, resp.status)
        term_ws = await browser.ws_connect(f"{public}/jupyter/terminals/websocket/{terminal['name']}"
                                           .replace("http", "ws", 1), headers=origin)
        await term_ws.send_json(["stdin", "echo guide-$((6*7))\r"])
        seen = ""
        async with asyncio.timeout(30):
            while "guide-42" not in seen:
                frame = await term_ws.receive_json()
                if frame[0] == "stdout":
                    seen += frame[1]
        checks.ok("a terminal's WebSocket echoed a command", "guide-42" in seen)
        upload = {"type": "file", "format": "base64", "content": base64.b64encode(os.urandom(256 * 1024)).decode()}
        async with browser.put(public + "/jupyter/api/contents/upload.bin", json=upload, headers=headers) as resp:
            checks.ok("a 256 KiB file uploaded through the contents API", resp.status in (200, 201), resp.status)
        checks.ok("the file is on disk", (work / "upload.bin").stat().st_size == 256 * 1024)
        async with browser.get(public + "/oauth2/sign_out", allow_redirects=False) as resp:
            checks.ok("sign-out answered", resp.status in (302, 303), resp.status)
        codes = await asyncio.gather(expect_close(kernel_ws), expect_close(term_ws))
        checks.ok("sign-out closed the kernel's and the terminal's WebSockets with 4401",
                  codes == [SESSION_ENDED, SESSION_ENDED], codes)
        async with browser.get(public + "/jupyter/api/kernels", headers={"Accept": "application/json"}) as resp:
            checks.ok("the API refuses the signed-out browser (401)", resp.status == 401, resp.status)


# -- Streamlit ---------------------------------------------------------------------------------------------

STREAMLIT_APP = '''import streamlit as st
st.title("Hello from Streamlit")
upload = st.file_uploader("Upload a file")
if upload is not None:
    st.write(f"received {len(upload.getvalue())} bytes")
'''


async def check_streamlit(stack: Stack, checks: Checks) -> None:
    bin_dir, port = venv("streamlit"), free_port()
    script = stack.root / "app.py"
    script.write_text(STREAMLIT_APP)
    argv = shell_command("streamlit", port)
    argv[0] = str(bin_dir / argv[0])
    argv[argv.index("app.py")] = str(script)
    app = await stack.spawn("streamlit", argv, env={**os.environ, "HOME": str(stack.root)})
    await wait_port(port, app, "streamlit", timeout=60)
    public, _ = await start_stack(stack, "streamlit", port)
    async with signed_in_page(stack, public + "/streamlit/") as (context, page):
        await page.get_by_text("Hello from Streamlit").wait_for()
        checks.ok("the page rendered the script's output (over Streamlit's WebSocket)", True)
        upload = stack.root / "five.txt"
        upload.write_text("hello")
        await page.locator("input[type=file]").set_input_files(str(upload))
        await page.get_by_text("received 5 bytes").wait_for()
        checks.ok("a file uploaded with st.file_uploader", True)
        cookies = await session_cookies(context)
    async with aiohttp.ClientSession() as client:
        ws = await client.ws_connect(public.replace("http", "ws", 1) + "/streamlit/_stcore/stream",
                                     headers={"Cookie": cookies, "Origin": public})
        async with client.get(public + "/oauth2/sign_out", headers={"Cookie": cookies},
                              allow_redirects=False) as resp:
            checks.ok("sign-out answered", resp.status in (302, 303), resp.status)
        checks.ok("sign-out closed Streamlit's WebSocket with 4401", await expect_close(ws) == SESSION_ENDED)


# -- Gradio ------------------------------------------------------------------------------------------------

GRADIO_APP = '''import os
import gradio as gr

def greet(name):
    return f"Hello {name}!"

def size(path):
    return f"{os.path.getsize(path)} bytes"

with gr.Blocks() as demo:
    name = gr.Textbox(label="Name")
    greeting = gr.Textbox(label="Greeting")
    gr.Button("Greet").click(greet, name, greeting)
    upload = gr.File(label="Upload")
    length = gr.Textbox(label="Size")
    upload.upload(size, upload, length)

{launch}
'''


async def check_gradio(stack: Stack, checks: Checks) -> None:
    bin_dir, port = venv("gradio"), free_port()
    (launch,) = blocks("gradio", "python")
    script = stack.root / "app.py"
    script.write_text(GRADIO_APP.replace("{launch}", launch.replace(str(DOC_PORTS["gradio"]), str(port))))
    app = await stack.spawn("gradio", [str(bin_dir / "python"), str(script)],
                            env={**os.environ, "HOME": str(stack.root), "GRADIO_ANALYTICS_ENABLED": "False"})
    await wait_port(port, app, "gradio", timeout=90)
    public, _ = await start_stack(stack, "gradio", port)
    async with signed_in_page(stack, public + "/gradio/") as (context, page):
        await page.get_by_label("Name").fill("alice")
        await page.get_by_role("button", name="Greet").click()
        greeting = page.get_by_label("Greeting")
        await page.wait_for_function("el => el.value === 'Hello alice!'", arg=await greeting.element_handle())
        checks.ok("a function called from the page and its answer shown", True)
        upload = stack.root / "five.txt"
        upload.write_text("hello")
        await page.locator("input[type=file]").set_input_files(str(upload))
        length = page.get_by_label("Size")
        await page.wait_for_function("el => el.value === '5 bytes'", arg=await length.element_handle())
        checks.ok("a file uploaded", True)
        cookies = await session_cookies(context)
    async with aiohttp.ClientSession() as client:
        async with client.get(public + "/gradio/config", headers={"Cookie": cookies}) as resp:
            checks.ok("the app's API answers the signed-in browser", resp.status == 200, resp.status)
        async with client.get(public + "/oauth2/sign_out", headers={"Cookie": cookies},
                              allow_redirects=False) as resp:
            checks.ok("sign-out answered", resp.status in (302, 303), resp.status)
        async with client.get(public + "/gradio/config", headers={"Cookie": cookies}) as resp:
            checks.ok("after sign-out the app's API answers 401", resp.status == 401, resp.status)


CHECKS: dict[str, Callable[[Stack, Checks], Awaitable[None]]] = {
    "jupyterlab": check_jupyterlab, "streamlit": check_streamlit, "gradio": check_gradio}


async def check(app: str) -> bool:
    checks = Checks(app)
    async with Stack() as stack:
        try:
            await CHECKS[app](stack, checks)
        except Exception as exc:
            print(f"FAIL {app}: {type(exc).__name__}: {exc}", flush=True)
            for proc in stack.procs:
                print(f"--- {proc.name} log (tail) ---\n{proc.log_tail(25)}", flush=True)
            return False
    print(f"PASS {app}: {len(checks.passed)} checks", flush=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("apps", nargs="*", metavar="app", help=f"any of {', '.join(CHECKS)} (default: all)")
    args = parser.parse_args()
    unknown = [a for a in args.apps if a not in CHECKS]
    if unknown:
        parser.error(f"unknown app(s) {unknown}: choose from {list(CHECKS)}")
    results = [run_bounded(lambda app=app: check(app), TIME_LIMIT) for app in (args.apps or list(CHECKS))]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
