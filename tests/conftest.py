from collections.abc import Iterator

import pytest

from proxy.logs import ACCESS_LOG

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(autouse=True)
def _access_log_left_as_found() -> Iterator[None]:
    """The process's one access log (``proxy.logs.ACCESS_LOG``) logs through the stdlib in tests. A test that
    starts its batched writer and leaves it running takes every later test's access lines in this process away
    from caplog (``tests/integration/test_websocket_outcomes.py`` then waited 10 s for a line, under xdist):
    such a test fails here, and the writer is stopped."""
    yield
    writer, ACCESS_LOG.writer = ACCESS_LOG.writer, None
    if writer is not None:
        writer.close()
        pytest.fail("the test left proxy.logs.ACCESS_LOG's writer running (stop_writer it, or patch start_writer)")
