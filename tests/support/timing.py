"""Waiting in integration tests without betting on the machine's speed.

A fixed ``asyncio.sleep`` just past an expiry is safe in one direction only: it never sleeps less, so "at
least this long has passed" holds however loaded the machine is. "Not yet that long" does not: on a busy
two-core runner the request that should still see a valid token can arrive after the token expired. So:

- ``eventually``: wait for a condition with a generous deadline instead of a fixed sleep followed by an
  assertion (a passing test costs only the time the condition takes);
- ``OffsetClock``: the proxy's clock (``create_app(clock=...)``, ``stack_factory(clock=...)``) that a test
  moves forward, with a token lifetime long enough that "not due yet" has tens of seconds of margin.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# How long a condition may take on a loaded machine before the test fails: generous, since a test that
# passes waits only as long as the condition takes.
DEFAULT_TIMEOUT = 10.0


async def eventually(predicate: Callable[[], T | Awaitable[T]], *, timeout: float = DEFAULT_TIMEOUT,
                     interval: float = 0.05, what: str | None = None) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that.

    An AssertionError inside the predicate counts as "not yet"; after ``timeout`` seconds the last value
    (or that AssertionError) is reported.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as exc:
            failure, value = exc, None      # type: ignore[assignment]
        if value:
            return value                    # type: ignore[return-value]
        if time.monotonic() >= deadline:
            label = what or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"{label} not met within {timeout} s (last: {failure or value!r})") from failure
        await asyncio.sleep(interval)


class OffsetClock:
    """Real time plus an offset the test moves forward: the proxy sees time pass without the test waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
