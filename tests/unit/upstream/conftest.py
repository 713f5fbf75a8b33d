"""Helpers for the lean client's tests: tiny raw servers that answer exactly what each test needs."""

import asyncio

from proxy.upstream.http1_pool import Http1Pool

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def raw_server(answers):
    """A server that reads one request head per answer and writes the answer (bytes, or a callable
    taking the writer); ``None`` closes the connection. Returns the server and the heads it read."""
    heads = []

    async def handle(reader, writer):
        try:
            for answer in answers:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                if answer is None:
                    break
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, heads


def pool_for(server, read_timeout=5.0):
    port = server.sockets[0].getsockname()[1]
    return Http1Pool(host="127.0.0.1", port=port, connect_timeout=2.0, read_timeout=read_timeout)


async def body_of(resp):
    return b"".join([chunk async for chunk in resp.iter_any()])
