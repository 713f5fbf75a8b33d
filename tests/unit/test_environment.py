"""The fast suites do not see a developer's ``AUTHPROXY_*`` variables (tests/support/environment.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import parse_config
from tests.support.environment import authproxy_variables
from tests.support.proxyrun import COOKIE_SECRET
from tests.unit.conftest import make_config

ROOT = Path(__file__).resolve().parents[2]
# What a developer might have exported for a manual run: each one changes what make_config() returns.
EXPORTED = {
    "AUTHPROXY_PUBLIC_URL": "https://exported.example.org",
    "AUTHPROXY_COOKIE__NAME": "_exported",
    "AUTHPROXY_PROVIDER__CLIENT_ID": "exported-client",
    "AUTHPROXY_CONFIG": "/nonexistent/exported.yaml",
}


# Built at import, before any fixture runs (as tests/fuzz builds its codec): make_config ignores os.environ.
IMPORTED = make_config()
MINIMAL = {"public_url": "https://app.example.com",
           "provider": {"issuer": "https://idp.example.com", "client_id": "cid", "client_secret": "csecret"},
           "cookie": {"secret": COOKIE_SECRET}, "upstreams": [{"path": "/", "url": "http://127.0.0.1:9"}]}


def test_no_authproxy_variable_reaches_a_test() -> None:
    """Run in-process this passes trivially on a clean shell; the subprocess tests below run it with
    ``EXPORTED`` set, which is where it proves something."""
    assert authproxy_variables() == []
    for config in (IMPORTED, make_config(), parse_config(MINIMAL)):      # parse_config reads os.environ
        assert config.public_url == "https://app.example.com"
        assert config.cookie.name != "_exported" and config.provider.client_id == "cid"


def test_a_variable_set_inside_a_test_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture runs before the test body: a test that sets a variable on purpose sees it."""
    monkeypatch.setenv("AUTHPROXY_PUBLIC_URL", "https://set-by-the-test.example.org")
    assert parse_config(MINIMAL).public_url == "https://set-by-the-test.example.org"


def _run_check(*extra: str) -> subprocess.CompletedProcess[str]:
    node = f"{Path(__file__).relative_to(ROOT)}::test_no_authproxy_variable_reaches_a_test"
    env = {**os.environ, **EXPORTED, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *extra, node],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_exported_variables_do_not_reach_the_unit_tests() -> None:
    result = _run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_without_the_fixture_the_exported_variables_would_reach_them() -> None:
    """The control: with conftest.py files ignored, the same check fails, so the one above is not vacuous."""
    result = _run_check("--noconftest")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "AUTHPROXY_" in result.stdout
