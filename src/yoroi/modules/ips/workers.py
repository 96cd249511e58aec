"""Running the reverse proxy in the foreground: in this process, or as N forked workers that
each bind the port with SO_REUSEPORT.

The parent of several workers only supervises: it passes SIGHUP (reload rules) and
SIGTERM/SIGINT (graceful stop) on to every worker, and starts a new worker in place of one that
died. A worker that fails at start-up (bad rules, port taken) stops the whole proxy with its
exit status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from types import FrameType

from yoroi.errors import YoroiError
from yoroi.modules.ips.frontend import ExchangeHook
from yoroi.modules.ips.proxy import InspectorFactory, ProxyConfig, ProxyServer

log = logging.getLogger(__name__)

STARTUP_FAILURE = 2  # the CLI's exit status for a runtime error
STARTUP_WINDOW = 10.0  # a worker failing this soon failed to start: respawning will not help
RESPAWN_PAUSE = 0.5  # seconds between restarts of a worker that keeps dying


def serve_here(config: ProxyConfig, factory: InspectorFactory,
               on_exchange: ExchangeHook | None = None) -> None:
    """One worker in this process until SIGTERM/SIGINT; errors are Yoroi errors."""
    inspector = factory()

    async def main() -> None:
        server = ProxyServer(config, inspector, factory=factory, on_exchange=on_exchange)
        await server.serve()

    asyncio.run(main())


def run(config: ProxyConfig, factory: InspectorFactory,
        on_exchange: ExchangeHook | None = None) -> int:
    """Serve with ``config.workers`` processes; the exit status."""
    if config.workers <= 1:
        serve_here(config, factory, on_exchange)
        return 0
    return Supervisor(config, factory, on_exchange).run()


class Supervisor:
    """The parent of the worker processes."""

    def __init__(self, config: ProxyConfig, factory: InspectorFactory,
                 on_exchange: ExchangeHook | None) -> None:
        self.config = config
        self.factory = factory
        self.on_exchange = on_exchange
        self.children: dict[int, float] = {}  # pid -> start time
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        """Start the workers and wait for them; returns once all have exited."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.config.workers):
                self._spawn()
            while self.children:
                pid, wait_status = os.wait()
                self._reap(pid, os.waitstatus_to_exitcode(wait_status))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.status

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(self._worker())
        self.children[pid] = time.monotonic()

    def _worker(self) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        try:
            serve_here(self.config, self.factory, self.on_exchange)
        except YoroiError as exc:
            print(f"yoroi: error: {exc}", file=sys.stderr, flush=True)
            return STARTUP_FAILURE
        except BaseException:
            log.exception("ips proxy worker %d failed", os.getpid())
            return STARTUP_FAILURE
        return 0

    def _reap(self, pid: int, code: int) -> None:
        started = self.children.pop(pid, None)
        if started is None or self.stopping:
            return
        if code == STARTUP_FAILURE and time.monotonic() - started < STARTUP_WINDOW:
            log.error("ips proxy: worker %d could not start; stopping", pid)
            self.status = STARTUP_FAILURE
            self._forward(signal.SIGTERM)
            self.stopping = True
            return
        log.warning("ips proxy: worker %d exited (%d); starting another", pid, code)
        if time.monotonic() - started < RESPAWN_PAUSE:
            time.sleep(RESPAWN_PAUSE)
        self._spawn()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGHUP:
            self.stopping = True
            sig = signal.SIGTERM
        self._forward(signal.Signals(sig))

    def _forward(self, sig: signal.Signals) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
