"""Keeping a developer's shell out of the fast tests.

``proxy.config`` reads ``AUTHPROXY_<KEY>__<SUBKEY>`` variables from ``os.environ`` whenever it is not handed an
environment of its own (``parse_config(data)``, ``load_config(path)``), and ``python -m proxy`` reads
``AUTHPROXY_CONFIG``. A developer who exported ``AUTHPROXY_COOKIE__NAME`` for a manual run would otherwise see
unit tests fail (or, worse, pass) for reasons that are not in the code. The unit, contract and fuzz suites'
``conftest.py`` call ``clear_authproxy_environment`` from an autouse fixture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

from proxy.config.loading import ENV_PREFIX


def authproxy_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The names of the ``AUTHPROXY_*`` variables in ``environ`` (default ``os.environ``)."""
    return sorted(name for name in (os.environ if environ is None else environ) if name.startswith(ENV_PREFIX))


def clear_authproxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every ``AUTHPROXY_*`` variable for one test; monkeypatch puts them back afterwards."""
    for name in authproxy_variables():
        monkeypatch.delenv(name)
