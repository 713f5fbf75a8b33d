"""TLS on the listener, with the real ``python -m proxy`` (uvloop): a CA and certificates made in the test,
replaced while the proxy runs (by polling and on SIGHUP), a broken replacement, ``workers: 2``, old protocol
versions and weak ciphers refused, the plain-HTTP redirect, start-up refusals, and a login over https."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from yarl import URL

from tests.support.browserless import login_via_http
from tests.support.echo import header_values, start_echo
from tests.support.fixtures import CLIENT_ID, CLIENT_SECRET, client_metadata
from tests.support.ports import free_port
from tests.support.proxyrun import config_dict
from tests.support.subproc import REPO, ProxyProcess, start_proxy_process
from tests.support.timing import eventually
from tests.support.tls import LocalCA, replace, serial_of

pytestmark = pytest.mark.integration

JSON = {"Accept": "application/json"}


@pytest.fixture
def pki(tmp_path: Path) -> tuple[LocalCA, Path, Path]:
    ca = LocalCA(tmp_path)
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    ca.issue(cert, key, serial=1001)
    return ca, cert, key


def tls_config(upstream_url: str, cert: Path, key: Path, *, issuer: str | None = None, port: int | None = None,
               **tls_options) -> dict:
    """A proxy on https whose /slow and /blob pass without a session; the provider points nowhere unless given."""
    port = port or free_port()
    data = config_dict(port=port, issuer=issuer or f"http://127.0.0.1:{free_port()}", upstream_url=upstream_url,
                       client_id=CLIENT_ID, client_secret=CLIENT_SECRET, skip_auth=[{"path": "^/(slow|blob)"}],
                       tls={"cert_file": str(cert), "key_file": str(key), **tls_options})
    data["public_url"] = f"https://127.0.0.1:{port}"
    data["cookie"] = {**data["cookie"], "secure": True}
    return data


async def start_tls(data: dict, ca: LocalCA, ready_path: str = "/ping") -> ProxyProcess:
    return await start_proxy_process(data, ready_path=ready_path, ssl=ca.client_context())


async def served_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial of the certificate a new connection to ``url`` is shown (and that it speaks http/1.1)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        return serial_of(ssl_object.getpeercert(True))
    finally:
        writer.close()


async def keep_alive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One GET on an open connection, its body read to the end so the connection stays usable; the status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                  if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(head.split(" ", 2)[1])


async def test_a_replaced_certificate_serves_new_connections_and_an_open_one_keeps_working(pki, rich):
    ca, cert, key = pki
    proxy = await start_tls(tls_config(rich.url, cert, key, reload_interval="0.2s"), ca)
    try:
        assert await served_serial(proxy.url, ca.client_context()) == 1001
        port = int(proxy.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ca.client_context())
        assert await keep_alive_get(reader, writer, "/ping") == 200
        ca.issue(cert, key, serial=1002)
        await eventually(lambda: _equal(served_serial(proxy.url, ca.client_context()), 1002),
                         what="the new certificate")
        # the keep-alive connection opened before still works, with the certificate it shook hands with
        assert await keep_alive_get(reader, writer, "/blob") == 200
        assert await keep_alive_get(reader, writer, "/ping") == 200
        assert serial_of(writer.get_extra_info("ssl_object").getpeercert(True)) == 1001
        writer.close()
        assert "TLS certificate reloaded" in proxy.stderr
    finally:
        assert await proxy.stop() == 0


async def test_a_broken_replacement_keeps_the_certificate_in_use(pki, rich, tmp_path):
    ca, cert, key = pki
    proxy = await start_tls(tls_config(rich.url, cert, key, reload_interval="0.2s"), ca)
    try:
        other = tmp_path / "other"
        other.mkdir()
        ca.issue(other / "cert.pem", other / "key.pem", serial=2002)
        replace(key, (other / "key.pem").read_bytes())                 # a key that is not the certificate's
        await eventually(lambda: "TLS certificate not reloaded" in proxy.stderr, what="the error")
        line = next(line for line in proxy.stderr.splitlines() if "not reloaded" in line)
        assert "tls.key_file" in line and str(key) in line and "BEGIN" not in line
        assert await served_serial(proxy.url, ca.client_context()) == 1001
        replace(cert, b"not a certificate\n")                          # a half-written certificate
        await asyncio.sleep(0.6)
        assert await served_serial(proxy.url, ca.client_context()) == 1001
        assert any("tls.cert_file" in line and str(cert) in line for line in proxy.stderr.splitlines())
        ca.issue(cert, key, serial=1003)                              # fixed: picked up
        await eventually(lambda: _equal(served_serial(proxy.url, ca.client_context()), 1003))
    finally:
        assert await proxy.stop() == 0


async def test_sighup_loads_the_new_certificate_and_in_flight_requests_finish(pki, rich):
    ca, cert, key = pki
    data = tls_config(rich.url, cert, key, reload_interval="1h")        # only SIGHUP reloads here
    proxy = await start_tls(data, ca)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca.client_context())) as client:
            slow = asyncio.ensure_future(client.get(proxy.url + "/slow?s=1.5"))
            await asyncio.sleep(0.3)
            ca.issue(cert, key, serial=1004)
            await asyncio.sleep(0.3)
            assert await served_serial(proxy.url, ca.client_context()) == 1001    # no polling: not yet
            proxy.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: _equal(served_serial(proxy.url, ca.client_context()), 1004),
                             what="the SIGHUP reload")
            resp = await slow
            assert resp.status == 200 and await resp.text() == "late"
            resp.release()
        # a broken pair on SIGHUP: the reload is rejected naming the key, the certificate stays
        replace(key, b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        proxy.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "reload rejected" in proxy.stderr, what="the rejection")
        assert "tls.key_file" in proxy.stderr.split("reload rejected", 1)[1]
        assert await served_serial(proxy.url, ca.client_context()) == 1004
    finally:
        assert await proxy.stop() == 0


async def test_two_workers_both_serve_and_both_reload(pki, rich):
    ca, cert, key = pki
    proxy = await start_tls(tls_config(rich.url, cert, key, reload_interval="0.2s") | {"workers": 2}, ca)

    async def serials() -> set[int]:
        return {await served_serial(proxy.url, ca.client_context()) for _ in range(16)}

    def workers() -> set[int]:
        found: set[int] = set()
        for task in Path(f"/proc/{proxy.proc.pid}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
        return {p for p in found if b"proxy.coordinator" not in Path(f"/proc/{p}/cmdline").read_bytes()}

    try:
        await eventually(lambda: len(workers()) == 2)
        assert await serials() == {1001}
        ca.issue(cert, key, serial=1005)
        await eventually(lambda: _equal(serials(), {1005}), timeout=10, what="both workers on the new certificate")
        proxy.proc.send_signal(signal.SIGHUP)                                  # forwarded to both: still https
        await asyncio.sleep(1.0)
        assert await serials() == {1005} and len(workers()) == 2
    finally:
        assert await proxy.stop() == 0


async def _equal(awaitable, expected) -> bool:
    return await awaitable == expected


def old_client(maximum: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0") -> ssl.SSLContext:
    """A client that speaks nothing newer than ``maximum`` (OpenSSL needs security level 0 for TLS 1.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_ciphers(ciphers)
    with warnings.catch_warnings():                       # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1, maximum
    return context


async def handshake(port: int, context: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    return version


@pytest.mark.parametrize("maximum,ciphers", [
    (ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"),                       # TLS 1.1
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"),        # TLS 1.2, but only a CBC suite
])
async def test_old_versions_and_weak_ciphers_are_refused(pki, rich, maximum, ciphers):
    ca, cert, key = pki
    # the same client shakes hands with a server that allows it, so a refusal below is the proxy's
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lax.minimum_version = ssl.TLSVersion.TLSv1
    lax.load_cert_chain(cert, key)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    lax_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", lax_port, ssl_context=lax).start()
    try:
        assert await handshake(lax_port, old_client(maximum, ciphers)) in ("TLSv1.1", "TLSv1.2")
    finally:
        await runner.cleanup()
    proxy = await start_tls(tls_config(rich.url, cert, key), ca)
    try:
        port = int(proxy.url.rsplit(":", 1)[1])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, old_client(maximum, ciphers))
        modern = ca.client_context()
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await handshake(port, modern) == "TLSv1.2"                 # 1.2 with a strong suite is served
        assert await handshake(port, ca.client_context()) == "TLSv1.3"    # and 1.3 is preferred
    finally:
        assert await proxy.stop() == 0


async def test_min_version_1_3_refuses_tls_1_2(pki, rich):
    ca, cert, key = pki
    proxy = await start_tls(tls_config(rich.url, cert, key, min_version="1.3"), ca)
    try:
        port = int(proxy.url.rsplit(":", 1)[1])
        modern = ca.client_context()
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, modern)
        assert await handshake(port, ca.client_context()) == "TLSv1.3"
    finally:
        assert await proxy.stop() == 0


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await reader.read(65536)
    writer.close()
    return data


def location(response: bytes) -> str | None:
    for line in response.split(b"\r\n")[1:]:
        if line.lower().startswith(b"location:"):
            return line.split(b":", 1)[1].strip().decode()
    return None


async def test_plain_http_is_redirected_to_https_and_never_elsewhere(pki, rich):
    ca, cert, key = pki
    plain = free_port()
    proxy = await start_tls(tls_config(rich.url, cert, key, redirect_http_listen=f"127.0.0.1:{plain}"), ca)
    try:
        async with aiohttp.ClientSession() as client:
            target = URL(f"http://127.0.0.1:{plain}/app/page?x=1&y=%2F", encoded=True)
            async with client.post(target, data=b"body", allow_redirects=False) as resp:
                assert resp.status == 308
                assert resp.headers["Location"] == proxy.url + "/app/page?x=1&y=%2F"
            # following it lands on the https listener (method kept: 308)
            connector = aiohttp.TCPConnector(ssl=ca.client_context())
        async with aiohttp.ClientSession(connector=connector) as client:
            async with client.get(f"http://127.0.0.1:{plain}/ping") as resp:
                assert resp.status == 200 and str(resp.url) == proxy.url + "/ping"
        for request, expected in [
            (b"GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n", None),                  # another host: 400
            (b"GET /x HTTP/1.1\r\nHost: evil.example@127.0.0.1\r\n\r\n", None),
            (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1.evil.example\r\n\r\n", None),
            (b"GET /x HTTP/1.1\r\n\r\n", None),                                        # no Host
            (b"GET //evil.example/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", proxy.url + "/"),
            (b"GET http://evil.example/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", proxy.url + "/"),
            (b"GET /a/b HTTP/1.1\r\nHost: 127.0.0.1:9999\r\n\r\n", proxy.url + "/a/b"),  # port: public_url's
        ]:
            response = await raw_request(plain, request)
            if expected is None:
                assert response.split(b" ", 2)[1] == b"400" and location(response) is None, (request, response)
            else:
                assert response.startswith(b"HTTP/1.1 308") and location(response) == expected, (request, response)
    finally:
        assert await proxy.stop() == 0


def start_up(data: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=False)


async def test_a_bad_tls_configuration_stops_start_up_naming_the_key(pki, tmp_path):
    ca, cert, key = pki
    other = tmp_path / "other"
    other.mkdir()
    ca.issue(other / "cert.pem", other / "key.pem", serial=3003)
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
                   check=True, capture_output=True)
    upstream = "http://127.0.0.1:9"
    cases = [
        (tls_config(upstream, tmp_path / "missing.pem", key), "tls.cert_file", "missing.pem"),
        (tls_config(upstream, key, key), "tls.cert_file", "no PEM certificate"),
        (tls_config(upstream, cert, other / "key.pem"), "tls.key_file", "is not the private key"),
        (tls_config(upstream, cert, encrypted), "tls.key_file", "unencrypted"),
        (tls_config(upstream, cert, key) | {"public_url": "http://127.0.0.1:4180"}, "public_url", "https://"),
    ]
    for data, key_name, fix in cases:
        result = start_up(data, tmp_path)
        assert result.returncode == 2, result.stderr
        assert key_name in result.stderr and fix in result.stderr, result.stderr
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cases[2][0]))    # the key that does not match
    checked = subprocess.run([sys.executable, "-m", "proxy", "--check-config", str(tmp_path / "config.yaml")],
                             cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 2 and "tls.key_file" in checked.stderr     # --check-config reads the files too


async def test_login_through_the_real_provider_over_https(pki, idp_factory):
    ca, cert, key = pki
    port = free_port()
    public = f"https://127.0.0.1:{port}"
    idp = await idp_factory(clients=[client_metadata(public + "/oauth2/callback")])
    echo = await start_echo(free_port())
    proxy = await start_tls(tls_config(echo.url, cert, key, issuer=idp.issuer, port=port), ca, "/ready")
    try:
        connector = aiohttp.TCPConnector(ssl=ca.client_context())
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as user:
            result = await login_via_http(user, public + "/oauth2/start?rd=/hello")
            assert result.status == 200 and result.url == public + "/hello"
            cookies = [c for c in user.cookie_jar if c.key.startswith("__Host-")]
            assert cookies and all(c["secure"] for c in cookies)       # Secure, as on any https public_url
            async with user.get(public + "/hello", headers=JSON) as resp:
                assert resp.status == 200
                assert header_values(await resp.json(), "X-Forwarded-Proto") == ["https"]
    finally:
        assert await proxy.stop() == 0
        await echo.close()


async def test_authproxy_ping_checks_an_https_listener_on_loopback(pki, rich):
    ca, cert, key = pki
    proxy = await start_tls(tls_config(rich.url, cert, key), ca)
    try:
        def ping(url: str) -> int:
            return subprocess.run([sys.executable, "-m", "proxy", "ping", "--url", url], cwd=REPO,
                                  capture_output=True, timeout=30, check=False).returncode
        assert await asyncio.to_thread(ping, proxy.url + "/ping") == 0          # a CA the system does not trust
        plain = proxy.url.replace("https://", "http://") + "/ping"
        assert await asyncio.to_thread(ping, plain) == 1                          # plain HTTP to the TLS port: down
    finally:
        assert await proxy.stop() == 0


async def test_a_handshake_never_finished_is_cut_after_the_header_timeout(pki, rich):
    """A client that connects and sends nothing (or half a ClientHello) is not kept for the loop's 60 s."""
    ca, cert, key = pki
    proxy = await start_tls(tls_config(rich.url, cert, key) | {"limits": {"header_timeout": "1s"}}, ca)
    try:
        port = int(proxy.url.rsplit(":", 1)[1])
        for opening in (b"", b"\x16\x03\x01\x02\x00\x01"):                  # nothing; a ClientHello's first bytes
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(opening)
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            assert asyncio.get_running_loop().time() - started < 5
            writer.close()
        assert await served_serial(proxy.url, ca.client_context()) == 1001          # the listener still serves
    finally:
        assert await proxy.stop() == 0


async def test_client_certificates_from_client_ca_file_only(pki, rich, tmp_path):
    """Mutual TLS: a client needs a certificate from ``client_ca_file`` — not one from the CA that signed the
    server's own certificate, even when that CA is in ``cert_file``'s chain."""
    ca, cert, key = pki
    cert.write_bytes(cert.read_bytes() + ca.path.read_bytes())          # a "full chain", root included
    (tmp_path / "clients").mkdir()
    clients = LocalCA(tmp_path / "clients")
    for issuer, name in ((clients, "good"), (ca, "server-ca")):
        issuer.issue(tmp_path / f"{name}.pem", tmp_path / f"{name}.key", serial=4000, client=True)
    good = ca.client_context()
    good.load_cert_chain(tmp_path / "good.pem", tmp_path / "good.key")
    proxy = await start_proxy_process(tls_config(rich.url, cert, key, client_ca_file=str(clients.path)),
                                      ready_path="/ping", ssl=good)
    port = int(proxy.url.rsplit(":", 1)[1])

    async def ping_as(name: str | None) -> int | None:
        context = ca.client_context()
        if name is not None:
            context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except (ssl.SSLError, ConnectionError):
            return None
        try:                                  # TLS 1.3: the server's refusal arrives after the client's handshake
            return await keep_alive_get(reader, writer, "/ping")
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()

    try:
        assert await ping_as("good") == 200
        assert await ping_as(None) is None
        assert await ping_as("server-ca") is None
    finally:
        assert await proxy.stop() == 0
