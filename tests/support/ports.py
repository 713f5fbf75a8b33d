"""Free loopback ports for the servers a test starts."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The OS picks it (bind to port 0); the socket is closed before returning, so another process could take
    it in between. That race is accepted: tests start their server right away.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
