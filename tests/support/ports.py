"""Free loopback ports for the servers a test starts."""

import random
import socket

# Ports handed out in this test process: the OS may offer a just-closed port again, and two servers
# of one test must never be given the same one.
_GIVEN: set[int] = set()


def is_free(port: int) -> bool:
    """Whether a TCP port on 127.0.0.1 can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never one given out before in this process.

    The OS picks it (bind to port 0); the socket is closed before returning, so another process could take
    it in between. That race is accepted: tests start their server right away.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def free_port_with_partner(offset: int) -> int:
    """A free port ``p`` such that ``p + offset`` is free too (a Redis Cluster node's bus port is +10000)."""
    for _ in range(1000):
        port = random.randint(20000, 65535 - offset)
        if port not in _GIVEN and port + offset not in _GIVEN and is_free(port) and is_free(port + offset):
            _GIVEN.update((port, port + offset))
            return port
    raise RuntimeError("no free port pair found")
