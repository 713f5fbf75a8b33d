"""supervisor.py in one process: the supervisor's decisions with fake forking, signalling, clock and wait,
and the coordinator's private directory.

The real processes — forked workers, signals from outside, a worker killed and replaced — are driven by
tests/integration/test_workers.py and test_process.py.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import supervisor
from proxy.config import Config
from proxy.errors import ConfigError, Problem
from proxy.supervisor import WORKER_MIN_LIFETIME, WORKER_RESTART_PAUSE, CoordinatorProcess, Supervisor
from tests.unit.conftest import make_config

COORDINATOR_PID = 99


def never_run(*_args: Any) -> None:
    raise AssertionError("nothing is forked in these tests")


def exited(code: int) -> int:
    """The wait status of a process that called exit(code)."""
    return code << 8


def killed(sig: int) -> int:
    """The wait status of a process killed by ``sig``."""
    return sig


class FakeCoordinator:
    def __init__(self) -> None:
        self.pid = COORDINATOR_PID
        self.socket = "/nonexistent/coordinator.sock"
        self.events: list[Any] = []

    def start(self) -> None:
        self.events.append("start")

    def restart(self, code: int) -> None:
        self.events.append(("restart", code))

    def stop(self) -> None:
        self.events.append("stop")


class Harness:
    """A supervisor whose workers are numbers: forking hands out the next pid, signals are recorded."""

    def __init__(self, config: Config, reload: Any = None) -> None:
        self.pids: Iterator[int] = iter(range(1000, 2000))
        self.started: list[int] = []
        self.signals: list[tuple[int, int]] = []
        self.slept: list[float] = []
        self.now = 100.0
        self.logging: list[Any] = []                  # the logging settings each accepted reload applied
        self.coordinator = FakeCoordinator()
        self.supervisor = Supervisor(config, reload or (lambda: config), self.coordinator,  # type: ignore[arg-type]
                                     never_run, start_worker=self._start, kill=self._kill, clock=lambda: self.now,
                                     sleep=self.slept.append)

    def _start(self) -> int:
        pid = next(self.pids)
        self.started.append(pid)
        return pid

    def _kill(self, pid: int, sig: int) -> None:
        if pid == 1666:
            raise ProcessLookupError(pid)            # already gone: ignored
        self.signals.append((pid, sig))

    def spawn(self, count: int) -> list[int]:
        for _ in range(count):
            self.supervisor.spawn()
        return list(self.supervisor.children)


@pytest.fixture
def harness(monkeypatch) -> Harness:
    h = Harness(make_config())
    # A reload applies the new logging settings; recorded here instead of reconfiguring the test run's logging.
    monkeypatch.setattr(supervisor, "configure_logging", h.logging.append)
    return h


def test_a_worker_that_dies_is_replaced_at_once_after_a_long_life(harness):
    first, second = harness.spawn(2)
    harness.now += WORKER_MIN_LIFETIME + 1
    harness.supervisor.reap(first, exited(3))
    assert list(harness.supervisor.children) == [second, 1002]
    assert harness.supervisor.children[1002] == harness.now
    assert harness.slept == []
    assert harness.supervisor.status == 0             # a replaced worker is no failure of the supervisor


def test_a_worker_that_dies_young_is_replaced_after_a_pause(harness, caplog):
    [first] = harness.spawn(1)
    harness.now += WORKER_MIN_LIFETIME / 2
    harness.supervisor.reap(first, killed(signal.SIGKILL))
    assert harness.slept == [WORKER_RESTART_PAUSE]
    assert list(harness.supervisor.children) == [1001]
    assert f"worker {first} exited with -{int(signal.SIGKILL)}; starting a new one" in caplog.text


def test_sigterm_is_passed_to_every_worker_and_none_is_replaced(harness):
    workers = harness.spawn(3)
    harness.supervisor.forward(signal.SIGTERM, None)
    assert harness.supervisor.stopping
    assert harness.signals == [(pid, signal.SIGTERM) for pid in workers]
    for pid in workers:
        harness.supervisor.reap(pid, exited(0))
    assert harness.supervisor.children == {}
    assert harness.started == workers
    assert harness.supervisor.status == 0


def test_sigint_reaches_the_workers_as_sigterm(harness):
    workers = harness.spawn(2)
    harness.supervisor.forward(signal.SIGINT, None)
    assert harness.supervisor.stopping
    assert harness.signals == [(pid, signal.SIGTERM) for pid in workers]


def test_while_stopping_the_first_failing_workers_status_is_the_supervisors(harness):
    workers = harness.spawn(4)
    harness.supervisor.forward(signal.SIGTERM, None)
    harness.supervisor.reap(workers[0], killed(signal.SIGKILL))   # killed by a signal: not a status
    assert harness.supervisor.status == 0
    harness.supervisor.reap(workers[1], exited(2))
    harness.supervisor.reap(workers[2], exited(5))
    harness.supervisor.reap(workers[3], exited(0))
    assert harness.supervisor.status == 2


def test_a_signal_to_a_worker_already_gone_is_ignored(harness):
    harness.supervisor.children[1666] = harness.now
    harness.supervisor.forward(signal.SIGTERM, None)
    assert harness.signals == []


def test_the_coordinator_is_restarted_unless_stopping(harness):
    harness.spawn(1)
    harness.supervisor.reap(COORDINATOR_PID, exited(1))
    assert harness.coordinator.events == [("restart", 1)]
    harness.supervisor.forward(signal.SIGTERM, None)
    harness.supervisor.reap(COORDINATOR_PID, exited(1))
    assert harness.coordinator.events == [("restart", 1)]
    assert len(harness.supervisor.children) == 1      # its death is never taken for a worker's


def test_an_unknown_child_is_neither_replaced_nor_counted(harness):
    harness.spawn(1)
    harness.supervisor.reap(4242, exited(7))
    assert harness.started == [1000]
    assert harness.supervisor.status == 0


def test_sighup_passes_the_signal_on_and_keeps_the_count_for_an_unchanged_config(harness):
    workers = harness.spawn(2)
    harness.supervisor.config = make_config(workers=2)
    harness.supervisor.reload = lambda: make_config(workers=2)
    harness.supervisor.forward(signal.SIGHUP, None)
    assert harness.signals == [(pid, signal.SIGHUP) for pid in workers]
    assert harness.started == workers
    assert not harness.supervisor.stopping


def test_sighup_with_more_workers_starts_them_on_the_new_config(harness, caplog):
    caplog.set_level(logging.INFO, logger="authproxy")
    workers = harness.spawn(2)
    grown = make_config(workers=4)
    harness.supervisor.reload = lambda: grown
    harness.supervisor.forward(signal.SIGHUP, None)
    assert harness.started == [*workers, 1002, 1003]
    assert harness.supervisor.config is grown          # workers forked from now on serve it
    assert harness.logging == [grown.logging]
    assert f"supervisor {harness.supervisor.pid} now runs 4 workers" in caplog.text


def test_sighup_with_fewer_workers_retires_the_surplus_without_replacing_it(harness):
    workers = harness.spawn(3)
    harness.supervisor.reload = lambda: make_config(workers=1)
    harness.supervisor.forward(signal.SIGHUP, None)
    assert harness.supervisor.retiring == set(workers[1:])
    assert harness.signals[-2:] == [(workers[1], signal.SIGTERM), (workers[2], signal.SIGTERM)]
    for pid in workers[1:]:
        harness.supervisor.reap(pid, exited(0))
    assert harness.started == workers                  # retired workers are not replaced
    assert harness.supervisor.retiring == set()
    assert list(harness.supervisor.children) == [workers[0]]
    harness.now += WORKER_MIN_LIFETIME + 1
    harness.supervisor.reap(workers[0], exited(1))    # but the one left still is
    assert list(harness.supervisor.children) == [1003]


def test_a_retired_worker_does_not_count_when_the_config_grows_again(harness):
    workers = harness.spawn(2)
    harness.supervisor.reload = lambda: make_config(workers=1)
    harness.supervisor.forward(signal.SIGHUP, None)
    harness.supervisor.reload = lambda: make_config(workers=2)
    harness.supervisor.forward(signal.SIGHUP, None)    # the retiring one is still draining
    assert harness.started == [*workers, 1002]


def test_a_rejected_reload_changes_nothing(harness):
    workers = harness.spawn(2)
    config = harness.supervisor.config

    def bad() -> Config:
        raise ConfigError("<unit>", [Problem("provider.issuer", "is required")])

    harness.supervisor.reload = bad
    harness.supervisor.forward(signal.SIGHUP, None)
    assert harness.signals == [(pid, signal.SIGHUP) for pid in workers]   # each worker logs the problems
    assert harness.supervisor.config is config
    assert harness.started == workers
    assert harness.logging == []


def test_sighup_while_stopping_does_not_read_the_config(harness):
    harness.spawn(1)
    harness.supervisor.forward(signal.SIGTERM, None)

    def never() -> Config:
        raise AssertionError("reloaded while stopping")

    harness.supervisor.reload = never
    harness.supervisor.forward(signal.SIGHUP, None)
    assert harness.supervisor.stopping


def test_supervise_reaps_until_no_worker_is_left_then_stops_the_coordinator(harness):
    first, second = harness.spawn(2)
    harness.now += WORKER_MIN_LIFETIME + 1
    events: list[Any] = [InterruptedError(), (COORDINATOR_PID, exited(1)), (first, exited(1))]

    def wait() -> tuple[int, int]:
        event = events.pop(0) if events else None
        if event is None:                            # after the replacement: stop, and the workers exit
            harness.supervisor.forward(signal.SIGTERM, None)
            pid = next(iter(harness.supervisor.children))
            return pid, exited(4)
        if isinstance(event, BaseException):
            raise event
        return event

    assert harness.supervisor.supervise(wait) == 4
    assert harness.started == [first, second, 1002]
    assert harness.coordinator.events == [("restart", 1), "stop"]


def test_supervise_ends_when_there_are_no_children_left_to_wait_for(harness):
    harness.spawn(1)

    def wait() -> tuple[int, int]:
        raise ChildProcessError

    assert harness.supervisor.supervise(wait) == 0
    assert harness.coordinator.events == ["stop"]


def test_run_installs_the_handlers_starts_the_coordinator_first_and_count_workers(harness, monkeypatch):
    installed: dict[int, Any] = {}
    monkeypatch.setattr(supervisor.signal, "signal", lambda sig, handler: installed.__setitem__(sig, handler))
    monkeypatch.setattr(harness.supervisor, "supervise", lambda: (harness.coordinator.events.append("supervise"), 0)[1])
    assert harness.supervisor.run(3) == 0
    assert set(installed) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    assert all(handler == harness.supervisor.forward for handler in installed.values())
    assert harness.coordinator.events == ["start", "supervise"]
    assert harness.started == [1000, 1001, 1002]


def test_run_workers_without_a_private_directory_fails_with_status_1(monkeypatch, caplog):
    def no_directory(**_kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(supervisor.tempfile, "mkdtemp", no_directory)
    assert supervisor.run_workers(make_config(workers=2), make_config, 2, never_run) == 1
    assert "needs a private directory for the host coordinator" in caplog.text


def test_the_coordinators_directory_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(supervisor.tempfile, "tempdir", None)
    coordinator = CoordinatorProcess()
    assert os.path.dirname(coordinator.directory) == str(tmp_path)
    assert stat.S_IMODE(os.stat(coordinator.directory).st_mode) == 0o700
    assert coordinator.socket == os.path.join(coordinator.directory, "coordinator.sock")
    assert coordinator.pid == 0                       # nothing started yet (never stop() it: kill(0) is the group)
