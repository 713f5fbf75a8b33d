from __future__ import annotations

import pytest

from proxy.config import Config, parse_config
from tests.support.proxyrun import COOKIE_SECRET


def make_config(**sections) -> Config:
    data = {
        "public_url": "https://app.example.com",
        "provider": {"issuer": "https://idp.example.com", "client_id": "cid", "client_secret": "csecret"},
        "cookie": {"secret": COOKIE_SECRET},
        "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}],
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return parse_config(data, source="<unit>")


@pytest.fixture
def config() -> Config:
    return make_config()
