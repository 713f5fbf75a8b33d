"""A reference for bench/transfers.py: the least work any user-space proxy can do per byte.

A layer-4 relay that understands nothing of HTTP: each accepted connection gets a connection to its
upstream and two threads, each moving one direction with blocking splice(2) through a 1 MiB pipe
(the bytes never enter user space; no event loop, no parsing, no authentication). Whatever a real
proxy adds — authproxy's checks, nginx's buffers — it cannot do better than this on the same machine,
so authproxy's rate over this one shows how much of the gap to "direct" is authproxy's own and how
much is the extra hop: a second loopback TCP connection, whose kernel work no proxy can skip.

    python bench/splice_relay.py --listen PORT=UPSTREAM [--listen PORT=UPSTREAM ...]

UPSTREAM is host:port or unix:/path.sock. Listens on 127.0.0.1 only. Runs until killed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import threading

from proxy.upstream.splice import PIPE_SIZE                     # the same pipe as authproxy's, for a fair floor
import contextlib


def pump(source: socket.socket, destination: socket.socket) -> None:
    """Move bytes from ``source`` to ``destination`` until the source ends or either side fails; then
    pass the end on (shutdown) so the peer of ``destination`` sees it."""
    pipe_r, pipe_w = os.pipe()
    try:
        fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        while True:
            moved = os.splice(source.fileno(), pipe_w, PIPE_SIZE)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(pipe_r, destination.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
        for sock, how in ((destination, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def connect(upstream: str) -> socket.socket:
    if upstream.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(upstream.removeprefix("unix:"))
        return sock
    host, _, port = upstream.rpartition(":")
    return socket.create_connection((host, int(port)))


def serve(port: int, upstream: str) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    while True:
        client, _ = listener.accept()
        try:
            server = connect(upstream)
        except OSError:
            client.close()
            continue
        threading.Thread(target=relay, args=(client, server), daemon=True).start()


def relay(client: socket.socket, server: socket.socket) -> None:
    back = threading.Thread(target=pump, args=(server, client), daemon=True)
    back.start()
    pump(client, server)
    back.join()
    client.close()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, metavar="PORT=UPSTREAM")
    args = parser.parse_args()
    listeners = []
    for spec in args.listen:
        port, _, target = spec.partition("=")
        listeners.append(threading.Thread(target=serve, args=(int(port), target), daemon=True))
    for thread in listeners:
        thread.start()
    for thread in listeners:
        thread.join()
