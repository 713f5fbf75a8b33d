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

    Picked at random below the kernel's ephemeral range (``ip_local_port_range``): a port the OS offers for
    ``bind(("127.0.0.1", 0))`` comes from that range, and so does the source port of every outgoing
    connection — of which the integration tests open thousands. Between our closing the probe socket and the
    server's bind, one of those connections (or another xdist worker or test run asking the OS the same way)
    could take the port: "address already in use", seen twice in a run of the integration suite under CPU
    load. Below that range only another random pick can collide. The socket is still closed before
    returning, so the race is not gone, only made rare.
    """
    high = _ephemeral_low() - 1
    if high > _LOWEST + 1000:
        for _ in range(1000):
            port = random.randint(_LOWEST, high)
            if port not in _GIVEN and is_free(port):
                _GIVEN.add(port)
                return port
    while True:                        # a system whose ephemeral range leaves no room below it
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


# Lowest port handed out: above the well-known and most registered services' ports.
_LOWEST = 10000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux default 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_with_partner(offset: int) -> int:
    """A free port ``p`` such that ``p + offset`` is free too (a Redis Cluster node's bus port is +10000)."""
    for _ in range(1000):
        port = random.randint(20000, 65535 - offset)
        if port not in _GIVEN and port + offset not in _GIVEN and is_free(port) and is_free(port + offset):
            _GIVEN.update((port, port + offset))
            return port
    raise RuntimeError("no free port pair found")
