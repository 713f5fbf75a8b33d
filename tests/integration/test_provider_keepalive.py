"""The provider's keep-alive timeout must not cost a sign-in (found by guides/check.py, issue 18).

A token exchange failed with "could not connect (ClientOSError)": the proxy reused a connection to the
provider that had been idle ~6 s, and the provider (node, whose keep-alive timeout is 5 s; Apache's is 5 s
too) closed it just as the request went out — on a loaded machine a server's idle timer fires late, so the
close can cross the next request on the wire. The proxy now keeps an idle provider connection for less than
those servers' 5 s, so it never sends on one the server is about to close.

The provider here is a raw HTTP/1.1 server that does exactly what the late timer did: a request arriving on
a connection idle for longer than ``SERVER_KEEPALIVE`` is dropped with a reset instead of answered.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from proxy.errors import ProviderError
from proxy.provider.client import ProviderClient, provider_http

pytestmark = pytest.mark.integration

SERVER_KEEPALIVE = 5.0


async def start_provider() -> tuple[asyncio.Server, str, list[str]]:
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last = time.monotonic()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if time.monotonic() - last > SERVER_KEEPALIVE:
                    seen.append("reset")
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: keep-alive\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                seen.append("answered")
                last = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


async def test_a_connection_idle_past_the_providers_keepalive_is_not_reused():
    server, url, seen = await start_provider()
    http = provider_http(None)
    try:
        client = ProviderClient(http, timeout=5.0)
        assert await client.get_json("discovery", url + "/.well-known/openid-configuration") == {"ok": True}
        await asyncio.sleep(SERVER_KEEPALIVE + 0.5)        # the proxy sat idle; the server's timer is late
        try:
            answer = await client.call("token exchange", "POST", url + "/token", data={"grant_type": "x"})
        except ProviderError as exc:
            pytest.fail(f"the exchange went out on a connection the provider was closing: {exc} ({seen})")
        assert answer == {"ok": True} and "reset" not in seen
    finally:
        await http.close()
        server.close()
