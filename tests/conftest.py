from collections.abc import Iterator

import pytest
from prometheus_client import values

from proxy.logs import ACCESS_LOG

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(autouse=True)
def _process_globals_left_as_found() -> Iterator[None]:
    """Two things are the process's, not a test's. prometheus-client's value class (``Metrics.for_process`` and
    ``for_worker`` set it): a test that leaves it changed fails here. And the one access log
    (``proxy.logs.ACCESS_LOG``), which logs through the stdlib in tests: a test that starts its batched writer
    and leaves it running takes every later test's access lines in this process away from caplog
    (``tests/integration/test_websocket_outcomes.py`` then waited 10 s for a line, under xdist): such a test
    fails here, and the writer is stopped."""
    value_class = values.ValueClass
    yield
    changed, values.ValueClass = values.ValueClass is not value_class, value_class
    writer, ACCESS_LOG.writer = ACCESS_LOG.writer, None
    if writer is not None:
        writer.close()
        pytest.fail("the test left proxy.logs.ACCESS_LOG's writer running (stop_writer it, or patch start_writer)")
    if changed:
        pytest.fail("the test left prometheus_client.values.ValueClass changed (monkeypatch it)")
