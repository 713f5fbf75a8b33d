from __future__ import annotations

import pytest

from proxy.config import Config, parse_config
from proxy.session import Identity, Session
from tests.support.environment import clear_authproxy_environment
from tests.support.proxyrun import COOKIE_SECRET


@pytest.fixture(autouse=True)
def _no_authproxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's exported ``AUTHPROXY_*`` variables must not change what a unit test sees."""
    clear_authproxy_environment(monkeypatch)


def make_config(**sections) -> Config:
    data = {
        "public_url": "https://app.example.com",
        "provider": {"issuer": "https://idp.example.com", "client_id": "cid", "client_secret": "csecret"},
        "cookie": {"secret": COOKIE_SECRET},
        "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}],
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    # environ={}: built at import time too (module constants in tests/fuzz), where no fixture runs yet.
    return parse_config(data, source="<unit>", environ={})


@pytest.fixture
def config() -> Config:
    return make_config()


NOW = 1_000_000.0


def make_session(**changes) -> Session:
    """A signed-in session at NOW with every token, for the codec and session tests."""
    base = dict(identity=Identity(sub="alice", email="a@x.test", preferred_username="alice", groups=("g1", "g2")),
                access_token="AT-secret", created_at=NOW - 10, expires_at=NOW + 300, refresh_token="RT-secret",
                id_token="ID-token")
    base.update(changes)
    return Session(**base)
