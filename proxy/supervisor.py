"""``workers: N``: the supervisor process, its forked workers and the host coordinator it runs for them.

- The supervisor forks N processes that all listen on the port (``SO_REUSEPORT``: the kernel spreads
  connections), restarts a worker that dies, and passes SIGTERM/SIGHUP on.
- Before the workers it starts the host coordinator (``coordinator.py``, its own process on a unix
  socket in a private 0700 directory) and restarts it too if it dies: through it the workers act as
  one — one refresh per session whichever worker gets the requests, and the end of a session
  (``ending.SessionEnd``) reaches every worker. ``workers: 1`` runs no coordinator (and no supervisor).
- Before the first fork it also makes the directory where the workers keep their metrics
  (``metrics.SharedMetrics``), so that a scrape of any worker shows them all; a worker that exits
  leaves its counters there and takes its live gauges away; the directory goes when the supervisor does.

Apart from ``server.py``, which serves in one process: this module only manages processes, and is
handed what a worker runs, so its decisions are testable without forking (tests/unit/test_server.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .config import Config
from .errors import ConfigError
from .logs import configure_logging
from .metrics import SharedMetrics

log = logging.getLogger("authproxy")

# A worker that dies sooner than this after starting is restarted only after a pause, so a
# configuration that crashes at once does not turn into a fork loop.
WORKER_MIN_LIFETIME = 5.0
WORKER_RESTART_PAUSE = 1.0


# What a forked worker runs until it stops: (its configuration, how to read it again, the supervisor's pid,
# the host coordinator's socket). server.py hands in its ``serve`` on its own event loop.
Worker = Callable[[Config, Callable[[], Config], int, str], None]


class CoordinatorProcess:
    """The host coordinator as a child of the supervisor: ``python -m proxy.coordinator SOCKET``, a fresh
    interpreter (spawned, not forked: it inherits none of the supervisor's state), its socket in a
    directory only this user can enter (``mkdtemp`` makes it 0700)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="authproxy-host-")
        self.socket = os.path.join(self.directory, "coordinator.sock")
        self.pid = 0
        self.started = 0.0

    def start(self) -> None:
        # This very ``proxy`` package, whatever the working directory holds (-P: not the cwd first).
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        argv = [sys.executable, "-P", "-m", "proxy.coordinator", self.socket]
        self.pid = os.posix_spawn(sys.executable, argv, env)
        self.started = time.monotonic()

    def restart(self, code: int) -> None:
        log.error("host coordinator %d exited with %d; starting a new one", self.pid, code)
        if time.monotonic() - self.started < WORKER_MIN_LIFETIME:
            time.sleep(WORKER_RESTART_PAUSE)
        self.start()

    def stop(self) -> None:
        """After the workers: they may need it while they drain."""
        try:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(50):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.1)
            else:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


class Supervisor:
    """The parent of ``workers: N``: forks the workers, passes signals on, replaces a worker that dies,
    follows a change of ``workers`` on SIGHUP and stops the host coordinator after the last worker.

    Its state — the live workers with their start times, the ones retired by a smaller ``workers``,
    whether it is stopping — is what the signal handler and the wait loop share. Forking, signalling,
    the clock and the pause are parameters, so its decisions can be tested in one process."""

    def __init__(self, config: Config, reload: Callable[[], Config], coordinator: CoordinatorProcess,
                 worker: Worker, *, start_worker: Callable[[], int] | None = None,
                 kill: Callable[[int, int], None] = os.kill,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, metrics: SharedMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.reload = reload
        self.coordinator = coordinator
        self.children: dict[int, float] = {}          # worker pid -> when it started
        self.retiring: set[int] = set()               # stopped because ``workers`` shrank: not replaced
        self.stopping = False
        self.status = 0
        self.pid = os.getpid()
        self._worker = worker
        self._start_worker = start_worker or self._fork_worker
        self._kill = kill
        self._clock = clock
        self._sleep = sleep

    def run(self, count: int) -> int:
        """Start the coordinator and ``count`` workers, then supervise until every worker has exited."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.forward)
        self.coordinator.start()
        for _ in range(count):
            self.spawn()
        log.info("supervisor %d started %d workers", os.getpid(), count)
        return self.supervise()

    def supervise(self, wait: Callable[[], tuple[int, int]] = os.wait) -> int:
        """Reap children until no worker is left; the exit status for the supervisor."""
        while self.children:
            try:
                pid, code = wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            self.reap(pid, code)
        self.coordinator.stop()
        if self.metrics is not None:
            self.metrics.remove()
        return self.status

    def reap(self, pid: int, wait_status: int) -> None:
        """One child exited: restart the coordinator or a worker unless stopping, or record the status."""
        if pid == self.coordinator.pid:
            if not self.stopping:
                self.coordinator.restart(os.waitstatus_to_exitcode(wait_status))
            return
        started = self.children.pop(pid, None)
        if started is not None and self.metrics is not None:
            self.metrics.worker_exited(pid)
        if started is None or pid in self.retiring:
            self.retiring.discard(pid)
            return
        code = os.waitstatus_to_exitcode(wait_status)
        if self.stopping:
            self.status = self.status or (code if code > 0 else 0)
            return
        log.error("worker %d exited with %d; starting a new one", pid, code)
        if self._clock() - started < WORKER_MIN_LIFETIME:
            self._sleep(WORKER_RESTART_PAUSE)
        self.spawn()

    def spawn(self) -> None:
        self.children[self._start_worker()] = self._clock()

    def _fork_worker(self) -> int:
        pid = os.fork()
        if pid == 0:                                  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            try:
                self._worker(self.config, self.reload, self.pid, self.coordinator.socket)
                os._exit(0)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                os._exit(1)
        return pid

    def signal_workers(self, sig: int, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                self._kill(pid, sig)

    def forward(self, sig: int, _frame: object) -> None:
        """The signal handler: SIGTERM/SIGINT stop every worker (as SIGTERM), SIGHUP reloads them all."""
        self.stopping = self.stopping or sig in (signal.SIGTERM, signal.SIGINT)
        self.signal_workers(signal.SIGTERM if sig == signal.SIGINT else sig, list(self.children))
        if sig == signal.SIGHUP and not self.stopping:
            self.resize()

    def resize(self) -> None:
        """Read the configuration again and start or retire workers to match its ``workers``."""
        try:
            self.config = self.reload()
        except ConfigError:
            return                                    # each worker logs the problems and keeps its config
        configure_logging(self.config.logging)
        count = self.config.worker_count
        serving = [pid for pid in self.children if pid not in self.retiring]
        for _ in range(count - len(serving)):
            self.spawn()
        surplus = serving[max(count, 1):]
        self.retiring.update(surplus)
        self.signal_workers(signal.SIGTERM, surplus)
        if surplus or count > len(serving):
            log.info("supervisor %d now runs %d workers", self.pid, max(count, 1))


def run_workers(config: Config, reload: Callable[[], Config], count: int, worker: Worker) -> int:
    """Fork ``count`` workers and keep them running; returns the exit status for the supervisor.

    On SIGHUP the supervisor reads the configuration too: workers it starts from then on (to replace
    one that died, or because ``workers`` grew) run the new one, and it stops workers beyond a smaller
    count. Each worker reloads itself on the SIGHUP passed on to it. The host coordinator is started
    before the workers, restarted whenever it dies, and stopped after the last worker."""
    try:
        coordinator = CoordinatorProcess()
    except OSError as exc:
        log.error("workers: %d needs a private directory for the host coordinator (%s); set TMPDIR to a writable "
                  "directory, or use workers: 1", count, exc)
        return 1
    try:
        metrics = SharedMetrics()
    except OSError as exc:
        coordinator.stop()
        log.error("workers: %d needs a private directory for the workers' metrics (%s); set TMPDIR to a "
                  "writable directory, or use workers: 1", count, exc)
        return 1
    return Supervisor(config, reload, coordinator, worker, metrics=metrics).run(count)
