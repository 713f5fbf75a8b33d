"""The app's side of a WebSocket, without a network: what the app is offered from the client's handshake,
the URL it is reached at, and relaying frames both ways with only the close codes an endpoint may send."""

from __future__ import annotations

import base64
import hashlib

import pytest
from aiohttp import WSCloseCode
from aiohttp.http_websocket import WS_KEY
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.upstream import Upstream
from proxy.upstream.frames import relayable_code, vanished
from proxy.upstream.websocket import _accepted, requested_protocols, upstream_ws_url
from tests.unit.conftest import make_config

UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket")]


def request(headers: list[tuple[str, str]] | None = None, path: str = "/ws"):
    return make_mocked_request("GET", path, headers=CIMultiDict(headers or []))


# -- handshake details -------------------------------------------------------------------------------


def test_requested_protocols_keep_the_clients_order():
    req = request(headers=[*UPGRADE, ("Sec-WebSocket-Protocol", "chat.v2, chat.v1"),
                           ("Sec-WebSocket-Protocol", "mqtt")])
    assert requested_protocols(req) == ("chat.v2", "chat.v1", "mqtt")
    assert requested_protocols(request(headers=UPGRADE)) == ()


@pytest.mark.parametrize("upstream, expected", [
    ({"path": "/", "url": "http://127.0.0.1:8080"}, "ws://127.0.0.1:8080/app/b/c?x=%20y"),
    ({"path": "/", "url": "https://app.internal/base"}, "wss://app.internal/base/app/b/c?x=%20y"),
    ({"path": "/app", "url": "http://127.0.0.1:8080", "strip_prefix": True}, "ws://127.0.0.1:8080/b/c?x=%20y"),
    ({"path": "/", "url": "unix:/run/app.sock"}, "ws://localhost/app/b/c?x=%20y"),
])
def test_upstream_url_is_the_http_one_with_a_ws_scheme(upstream, expected):
    """The same URL as Forwarder.forward: normalised path, strip_prefix, raw query untouched."""
    config = make_config(upstreams=[upstream]).upstreams[0]
    req = request(headers=UPGRADE, path="/app//b/%63?x=%20y")
    assert str(upstream_ws_url(Upstream(config, None), req)) == expected  # type: ignore[arg-type]


# -- relaying -----------------------------------------------------------------------------------------


def test_a_close_without_status_is_a_normal_closure_and_vanishing_sides_are_told_apart():
    assert relayable_code(0, "client") == WSCloseCode.OK
    upstream_gone, client_gone = vanished("upstream"), vanished("client")
    assert (upstream_gone.code, upstream_gone.by, upstream_gone.reported_code, upstream_gone.vanished) == \
        (WSCloseCode.BAD_GATEWAY, "upstream", 1006, True)
    assert (client_gone.code, client_gone.by, client_gone.reported_code) == (WSCloseCode.GOING_AWAY, "client", 1006)


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535, 999, 1])
@pytest.mark.parametrize("side, instead", [("client", WSCloseCode.GOING_AWAY), ("upstream", WSCloseCode.BAD_GATEWAY)])
def test_a_close_code_that_may_not_be_sent_is_never_relayed(code, side, instead):
    """RFC 6455 §7.4.1: 1005, 1006 and 1015 are never sent; 1004 and 1016-2999 are reserved; 1000-4999 only."""
    assert relayable_code(code, side) == instead


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_every_code_an_endpoint_may_send_is_relayed(code):
    assert relayable_code(code, "client") == code


class _Answer:
    """The parts of aiohttp's ClientResponse ``_accepted`` reads."""

    def __init__(self, key: str, **fields: str) -> None:
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_KEY).digest()).decode()
        self.status, self.reason = 101, "Switching Protocols"
        self.headers = CIMultiDict({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept})
        for name, value in fields.items():
            self.headers[name.replace("_", "-")] = value


def test_the_apps_answer_must_pick_a_subprotocol_the_client_offered():
    """RFC 6455 §4.1: relayed, an unoffered subprotocol gives the client a socket it never agreed to."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    assert _accepted(_Answer(key, Sec_WebSocket_Protocol="chat"), key, ("chat", "v2"), False)[0] == "chat"
    assert _accepted(_Answer(key), key, ("chat",), False)[0] is None
    with pytest.raises(ValueError, match="did not offer"):
        _accepted(_Answer(key, Sec_WebSocket_Protocol="admin"), key, ("chat",), False)
    with pytest.raises(ValueError, match="did not offer"):
        _accepted(_Answer(key, Sec_WebSocket_Protocol="chat"), key, (), False)


@pytest.mark.parametrize("connection, ok", [("Upgrade", True), ("keep-alive, Upgrade", True), ("upgrade", True),
                                            ("X-Upgraded", False), ("no-upgrade-here", False), ("keep-alive", False)])
def test_the_apps_connection_field_must_name_upgrade_as_a_token(connection, ok):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    answer = _Answer(key, Connection=connection)
    if ok:
        assert _accepted(answer, key, (), False) == (None, None)
    else:
        with pytest.raises(ValueError, match="no valid WebSocket answer"):
            _accepted(answer, key, (), False)
