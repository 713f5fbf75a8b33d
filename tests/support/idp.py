"""Run the real OpenID provider, `oidc-provider` 9 (tests/idp/server.mjs), from tests.

`start_idp()` writes the provider's JSON config to a temporary directory, starts `node server.mjs CONFIG` in
tests/idp, and waits for its `{"event": "ready"}` line on stdout. `IdP.events()` returns the event lines the
server printed and `IdP.count_grants()` counts token-endpoint grants, which is how tests prove, say, that ten
concurrent requests spent one refresh token (see server.mjs for the events). Those two read the copy of the
lines that the server appends to a file before it sends the HTTP response that caused them: reading the
stdout pipe instead would race the response, and a test that asserts right after a token request would
sometimes miss the grant it just made.

The token store is saved to the temporary directory when the provider stops, so `IdP.restart(jwks=...)`
bounces the same provider on the same port with its sessions, grants and tokens intact: a key rotation as a
real provider does it. `restart(keep_state=False)` forgets them instead.

Needs `npm ci` (or `npm install`) run once in tests/idp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from joserfc.jwk import ECKey, RSAKey

from tests.support.ports import free_port

IDP_DIR = Path(__file__).resolve().parent.parent / "idp"

# Seconds to wait for the ready line: node's start-up plus RSA key generation, on a slow CI machine.
READY_TIMEOUT = 45.0
# Seconds to wait for node to save its state and exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 5.0
# Seconds between looks at the events file in IdP.wait_for_event().
EVENT_POLL_INTERVAL = 0.02
# Seconds for one helper request (introspection, userinfo, revocation, discovery).
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)

# oidc-provider's default routes, relative to where it listens (tests/idp/server.mjs keeps them).
INTROSPECTION_PATH = "/token/introspection"
REVOCATION_PATH = "/token/revocation"
USERINFO_PATH = "/me"
JWKS_PATH = "/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def client_basic_auth(client_id: str, client_secret: str) -> dict[str, str]:
    """The Authorization header for client_secret_basic: both parts form-urlencoded first (RFC 6749 §2.3.1)."""
    credentials = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode("ascii")}


class IdPError(RuntimeError):
    """The provider did not start, died, or answered a helper request with an error."""


class IdP:
    """A running oidc-provider; made by `start_idp()`."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.port: int = config["port"]
        self.issuer: str = config.get("issuer") or f"http://127.0.0.1:{self.port}"
        # Helper requests go where the server listens, whatever issuer it was given.
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._events_file = Path(config["events_file"])
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stopped_events: list[dict[str, Any]] | None = None  # what events() says once stop() deleted the file

    def __repr__(self) -> str:
        state = "running" if self._proc and self._proc.returncode is None else "stopped"
        return f"<IdP {self.issuer} {state}>"

    # -- what the provider printed -------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """The event lines printed so far, oldest first, across restarts."""
        if self._stopped_events is not None:
            return list(self._stopped_events)
        try:
            text = self._events_file.read_text()
        except FileNotFoundError:
            return []
        # A line is written whole before its response goes out; a partial last line is one still being written.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def count_grants(self, grant_type: str, ok: bool | None = True) -> int:
        """Token-endpoint grants of `grant_type` so far: successful ones, failed ones (ok=False), or all (None)."""
        return sum(
            1
            for event in self.events()
            if event.get("event") == "grant"
            and event.get("grant_type") == grant_type
            and (ok is None or event.get("ok") is ok)
        )

    async def wait_for_event(self, event: str, *, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first event named `event` whose fields match `fields`, waiting for it if need be.

        For what happens after a response, such as backchannel logout calls.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events = self.events()
            for item in events:
                if item.get("event") == event and all(item.get(k) == v for k, v in fields.items()):
                    return item
            if asyncio.get_running_loop().time() > deadline:
                raise IdPError(f"no {event!r} event matching {fields} within {timeout}s: {events}")
            await asyncio.sleep(EVENT_POLL_INTERVAL)

    def stderr(self) -> str:
        """What node printed on stderr (oidc-provider's warnings, crashes)."""
        return "".join(self._stderr)

    # -- life cycle -------------------------------------------------------------------------------------------

    async def _start(self) -> None:
        config_path = self._workdir / "config.json"
        config_path.write_text(json.dumps(self.config))
        self._proc = await asyncio.create_subprocess_exec(
            "node",
            "server.mjs",
            str(config_path),
            cwd=IDP_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        ready = asyncio.get_running_loop().create_future()
        self._readers = [
            asyncio.create_task(self._read_stdout(self._proc.stdout, ready)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]
        exited = asyncio.create_task(self._proc.wait())
        try:
            done, _ = await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if ready not in done:
            await self._terminate()
            ready.cancel()
            what = "exited" if exited in done else f"was not ready within {READY_TIMEOUT}s"
            raise IdPError(f"oidc-provider {what}; stderr:\n{self.stderr()}")

    async def _read_stdout(self, stream: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace")
            self._stdout.append(line)
            if line.startswith('{"event":"ready"') and not ready.done():
                ready.set_result(None)

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self._stderr.append(raw.decode(errors="replace"))

    async def _terminate(self) -> None:
        """SIGTERM (the server saves its state), then SIGKILL if it lingers; wait for the readers."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        readers, self._readers = self._readers, []
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def stop(self) -> None:
        """Stop the provider for good and delete its temporary directory; events() still answers. Idempotent."""
        await self._terminate()
        if self._stopped_events is None:
            self._stopped_events = self.events()
        shutil.rmtree(self._workdir, ignore_errors=True)

    async def pause(self) -> None:
        """Stop the process but keep its state: the provider is unreachable until ``resume()``."""
        await self._terminate()

    async def resume(self) -> None:
        try:
            await self._start()
        except IdPError as exc:
            if "was not ready" not in str(exc):
                raise
            # Seen once in CI: node restarted on the same port never said ready within 45 s (a loaded
            # machine); as in start_idp, a start that hung is tried once more, one that failed is not.
            await self._start()

    def freeze(self) -> None:
        """SIGSTOP: the provider still accepts connections (the kernel queues them) but answers nothing
        until ``thaw()``, then answers everything it was sent meanwhile, to callers that may have gone."""
        assert self._proc is not None and self._proc.returncode is None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    async def restart(self, *, keep_state: bool = True, **changes: Any) -> None:
        """Stop and start again on the same port with `changes` applied to the config (None removes a key).

        E.g. `restart(jwks=generate_jwks("EC"))` rotates the signing key. Sessions, grants and tokens
        survive unless keep_state is False.
        """
        if "port" in changes and changes["port"] != self.port:
            raise ValueError("restart() keeps the port; start another IdP for a new one")
        if self._stopped_events is not None:
            raise IdPError("stop() is final; restart() a running IdP instead")
        await self._terminate()
        for key, value in changes.items():
            if value is None:
                self.config.pop(key, None)
            else:
                self.config[key] = value
        if not keep_state:
            Path(self.config["state_file"]).unlink(missing_ok=True)
        await self._start()

    # -- requests to the provider -----------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            async with session.request(method, self.base_url + path, **kwargs) as resp:
                text = await resp.text()
                # jwks_uri answers application/jwk-set+json, which resp.json() refuses by default.
                return resp.status, json.loads(text) if resp.content_type.endswith("json") else text

    async def _expect_ok(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self._request(method, path, **kwargs)
        if status != 200:
            raise IdPError(f"{what}: HTTP {status}: {body}")
        return body

    async def discovery(self) -> dict[str, Any]:
        """The provider's metadata (OIDC Discovery 1.0 §4)."""
        return await self._expect_ok("discovery", "GET", DISCOVERY_PATH)

    async def public_jwks(self) -> dict[str, Any]:
        """The key set served at jwks_uri (public keys only)."""
        return await self._expect_ok("jwks", "GET", JWKS_PATH)

    async def introspect(self, token: str, client_id: str, client_secret: str) -> dict[str, Any]:
        """RFC 7662 introspection, authenticated with client_secret_basic; `{"active": false}` for a dead token."""
        headers = client_basic_auth(client_id, client_secret)
        data = {"token": token}
        return await self._expect_ok("introspection", "POST", INTROSPECTION_PATH, data=data, headers=headers)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """OIDC Core §5.3 userinfo; raises IdPError for a token the provider rejects."""
        headers = {"Authorization": f"Bearer {access_token}"}
        return await self._expect_ok("userinfo", "GET", USERINFO_PATH, headers=headers)

    async def revoke(self, token: str, client_id: str, client_secret: str) -> None:
        """RFC 7009 revocation of an access or refresh token, authenticated with client_secret_basic."""
        headers = client_basic_auth(client_id, client_secret)
        await self._expect_ok("revocation", "POST", REVOCATION_PATH, data={"token": token}, headers=headers)


async def start_idp(*, clients: list[dict[str, Any]], **options: Any) -> IdP:
    """Start oidc-provider with these clients and options (the keys server.mjs documents) and wait until ready.

    `port` defaults to a free one. Raises IdPError, with node's stderr, if it dies or is not ready in time.
    The caller must `await idp.stop()`; the `idp_factory` fixture does that for you.
    """
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise IdPError(f"oidc-provider is not installed: run `npm ci` in {IDP_DIR}")
    workdir = Path(tempfile.mkdtemp(prefix="authproxy-idp-"))
    config: dict[str, Any] = {
        "port": options.pop("port", None) or free_port(),
        "clients": clients,
        "state_file": str(workdir / "state.json"),
        "events_file": str(workdir / "events.jsonl"),
        **options,
    }
    idp = IdP(config, workdir)
    try:
        try:
            await idp._start()
        except IdPError as exc:
            if "was not ready" not in str(exc):
                raise
            # A start that hung on a loaded machine (seen once with a browser test running beside the
            # suite) is tried once more; a provider that exits with an error is not.
            await idp._start()
    except BaseException:
        await idp.stop()
        raise
    return idp


def generate_jwks(kind: str = "RSA", kid: str | None = None) -> dict[str, Any]:
    """A private JWK set with one new signing key: "RSA" (2048 bits, RS256) or "EC" (P-256, ES256).

    The kid defaults to the key's RFC 7638 thumbprint. Combine sets with `{"keys": a["keys"] + b["keys"]}`;
    the provider signs with the first key.
    """
    if kind == "RSA":
        key: RSAKey | ECKey = RSAKey.generate_key(2048, private=True)
        alg = "RS256"
    elif kind == "EC":
        key = ECKey.generate_key("P-256", private=True)
        alg = "ES256"
    else:
        raise ValueError(f"generate_jwks: kind must be 'RSA' or 'EC', got {kind!r}")
    jwk = key.as_dict(private=True)
    jwk.update(kid=kid or key.thumbprint(), use="sig", alg=alg)
    return {"keys": [jwk]}
