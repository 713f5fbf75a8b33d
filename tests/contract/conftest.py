"""Fixtures for every contract test."""

from __future__ import annotations

import pytest

from tests.support.environment import clear_authproxy_environment


@pytest.fixture(autouse=True)
def _no_authproxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's exported ``AUTHPROXY_*`` variables must not change what a contract test sees."""
    clear_authproxy_environment(monkeypatch)
