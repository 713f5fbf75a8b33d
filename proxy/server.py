"""Running the proxy as a process: listening, signals, reloads; ``workers: N`` is ``supervisor.py``'s.

- **SIGTERM / SIGINT**: stop accepting, let in-flight requests finish for up to ``shutdown_timeout``,
  exit 0 — what a container orchestrator expects during a rolling update.
- **SIGHUP**: read the configuration again. A bad file is rejected with every problem logged and
  the running configuration stays in force; a good one starts a new listener (``SO_REUSEPORT``, so
  no connection is refused in between) and the old one drains like on SIGTERM.
- **tls**: the listener serves https (``tls.py``); a changed certificate is picked up by the listener
  itself, and on SIGHUP by the new listener; ``tls.redirect_http_listen`` is a second, plain listener.
- **workers: N**: ``supervisor.py`` forks N processes that each run ``serve`` on the same port
  (``SO_REUSEPORT``), with the host coordinator between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from .app import Lasting, create_app
from .config import Config
from .config.values import _split_listen
from .connections import LimitedRunner, raise_descriptor_limit
from .errors import ConfigError
from .host import HostDenylist, HostFanout, HostLink
from .logs import ACCESS_LOG, configure_logging
from .metrics import METRICS, Metrics, handle_metrics
from .supervisor import run_workers
from .tls import ListenerCertificate, TLSSite, redirect_app, watching

log = logging.getLogger("authproxy")

# How aiohttp's server serves the proxy (the tests' in-process proxy uses the same): no access log of
# aiohttp's own (logs.py writes ours); a handler is cancelled when its client goes away; request bodies
# are not decoded (one sent with Content-Encoding goes upstream as it came).
SERVER_OPTIONS: dict[str, Any] = {"access_log": None, "handler_cancellation": True, "auto_decompress": False}


def make_runner(app: web.Application, config: Config, **options: Any) -> web.AppRunner:
    """The runner that serves ``app`` as production does: SERVER_OPTIONS, and ``limits`` on every client
    connection (``connections.py``: head and idle timeouts, the connection cap)."""
    return LimitedRunner(app, config.limits, **SERVER_OPTIONS, **options)


async def start_runner(config: Config, lasting: Lasting | None = None) -> web.AppRunner:
    app = create_app(config, lasting=lasting)
    if config.metrics_listen:
        app.cleanup_ctx.append(_metrics_listener(config.metrics_listen))
    certificate = ListenerCertificate(config.tls) if config.tls is not None else None
    if certificate is not None:
        app.cleanup_ctx.append(watching(certificate))
    if config.tls is not None and config.tls.redirect_http_listen:
        app.cleanup_ctx.append(_redirect_listener(config, config.tls.redirect_http_listen))
    raise_descriptor_limit(config.limits)
    runner = make_runner(app, config, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    if certificate is None:
        await web.TCPSite(runner, config.listen_host, config.listen_port, reuse_port=True, backlog=1024).start()
    else:
        await TLSSite(runner, config.listen_host, config.listen_port, reuse_port=True, backlog=1024,
                      ssl_context=certificate.context, handshake_timeout=config.limits.header_timeout).start()
    return runner


def _redirect_listener(config: Config, listen: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """``tls.redirect_http_listen``: plain HTTP answered with a 308 to https (``tls.redirect_app``), under the
    same ``limits`` as the main listener."""
    async def ctx(_main: web.Application) -> AsyncIterator[None]:
        host, port = _split_listen(listen)
        runner = make_runner(redirect_app(config), config, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_port=True).start()
        yield
        await runner.cleanup()
    return ctx


def _metrics_listener(listen: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """``/metrics`` on its own address, so it need not be reachable where users are."""
    async def ctx(main: web.Application) -> AsyncIterator[None]:
        host, _, port = listen.rpartition(":")
        metrics_app = web.Application()
        metrics_app[METRICS] = main[METRICS]
        metrics_app.router.add_get("/metrics", handle_metrics)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port), reuse_port=True).start()
        yield
        await runner.cleanup()
    return ctx


async def serve(config: Config, reload: Callable[[], Config], supervisor: int = 0,
                host_socket: str | None = None, metrics: Metrics | None = None) -> None:
    """Serve until SIGTERM/SIGINT; reload on SIGHUP (``supervisor``: the pid of the process that
    forked this worker, which applies a change of ``workers`` itself; ``host_socket``: where its
    host coordinator listens; ``metrics``: a worker's, shared with the others)."""
    loop = asyncio.get_running_loop()
    stop, hup = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    lasting = Lasting(metrics or Metrics.for_process())    # metrics and the memory denylist outlive reloads
    if host_socket is not None:
        lasting.host = HostLink(host_socket)
        lasting.fanout = HostFanout(lasting.host, lasting.metrics)
        lasting.denylist = HostDenylist(lasting.host)
    runner = await start_runner(config, lasting)
    ACCESS_LOG.start_writer(config.logging)
    log.info("ready on %s:%d (pid %d)", config.listen_host, config.listen_port, os.getpid())
    while True:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hup.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if stop.is_set():
            log.info("shutting down: finishing in-flight requests (up to %gs)", config.shutdown_timeout)
            await runner.cleanup()
            ACCESS_LOG.stop_writer()
            if lasting.host is not None:
                await lasting.host.close()
            log.info("stopped")
            return
        hup.clear()
        runner, config = await _reloaded(runner, config, reload, lasting, supervisor)


async def _reloaded(runner: web.AppRunner, config: Config, reload: Callable[[], Config], lasting: Lasting,
                    supervisor: int) -> tuple[web.AppRunner, Config]:
    """SIGHUP: the new configuration's listener, started before the old one drains (``SO_REUSEPORT``);
    or, when the file is rejected, the running ones, unchanged."""
    try:
        new_config = reload()
        new_runner = await start_runner(new_config, lasting)      # a certificate changed since reload() checked it
    except ConfigError as exc:
        log.error("reload rejected, the running configuration stays in force:\n%s", exc)
        return runner, config
    configure_logging(new_config.logging)
    ACCESS_LOG.start_writer(new_config.logging)
    if new_config.worker_count != config.worker_count and os.getppid() != supervisor:
        log.warning("workers: %d takes effect when authproxy is restarted (it runs as one process now)",
                    new_config.worker_count)
    log.info("configuration reloaded; draining the old listener")
    await runner.cleanup()
    return new_runner, new_config


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run``, on uvloop's event loop when it is installed (the ``speed`` extra).

    uvloop's C event loop and socket transports replace asyncio's pure-Python selector loop, where a
    profile of tiny proxied GETs spent over a third of the time (``_SelectorSocketTransport.write`` and
    ``_read_ready``). Without uvloop the standard loop runs, with the same behaviour.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def run(config: Config, reload: Callable[[], Config]) -> int:
    count = config.worker_count
    if count <= 1:
        run_loop(serve(config, reload))
        return 0
    sys.stdout.flush()
    return run_workers(config, reload, count, _worker)


def _worker(config: Config, reload: Callable[[], Config], supervisor: int, host_socket: str) -> None:
    """One forked worker's life: serve until SIGTERM, as a process of its own."""
    run_loop(serve(config, reload, supervisor, host_socket, Metrics.for_worker()))
