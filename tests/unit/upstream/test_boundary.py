"""The upstream boundary holds: only ``proxy/upstream/`` opens connections to the app or sends it a request."""

from __future__ import annotations

import ast
from pathlib import Path

PROXY = Path(__file__).resolve().parents[3] / "proxy"
UPSTREAM = PROXY / "upstream"
# Calls that reach the app: aiohttp's client (HTTP and WebSocket), the lean client's pool, raw connections.
TALKING = frozenset({"ws_connect", "request_spliced", "create_connection", "create_unix_connection", "open_connection"})


def _talks(path: Path) -> set[str]:
    """What in ``path`` reaches an upstream: the calls above, ``<upstream>.client.request``, httptools' response
    parser (its request parser reads clients: the express lane's, ``proxy/express.py``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in TALKING:
            found.add(node.attr)
        elif isinstance(node, ast.Attribute) and node.attr == "request" and isinstance(node.value, ast.Attribute) \
                and node.value.attr in ("client", "lean"):
            found.add(f"{node.value.attr}.request")
        elif _response_parser(node):
            found.add("httptools")
    return found


def _response_parser(node: ast.AST) -> bool:
    """``httptools.HttpResponseParser``, used or imported: what reads the app's answers."""
    if isinstance(node, ast.Attribute):
        return node.attr == "HttpResponseParser"
    return isinstance(node, ast.ImportFrom) and node.module == "httptools" \
        and any(a.name == "HttpResponseParser" for a in node.names)


def test_only_the_upstream_package_talks_to_the_app():
    outside = {str(p.relative_to(PROXY)): _talks(p) for p in PROXY.rglob("*.py") if UPSTREAM not in p.parents}
    assert {name: found for name, found in outside.items() if found} == {}


def test_the_check_sees_the_upstream_packages_own_calls():
    """The detector is not blind: inside the package it finds every way the proxy reaches the app."""
    inside = set().union(*(_talks(p) for p in UPSTREAM.glob("*.py")))
    # (No ``ws_connect`` since the frame relay: the WebSocket handshake is a ``client.request`` too.)
    assert {"request_spliced", "client.request", "httptools", "create_connection"} <= inside
