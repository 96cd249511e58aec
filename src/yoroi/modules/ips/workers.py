"""Running the reverse proxy in the foreground: worker processes under a supervisor.

The supervisor opens the listening sockets, one per worker slot, all bound to the port with
SO_REUSEPORT (the kernel spreads connections among them), and never loads rules itself: every
worker is a fresh fork that builds its own engine. SIGHUP replaces the workers instead of
reloading the rules inside them, because an engine freed in a long-lived process leaves its
heap fragmented (worker RSS grew 23 % over 1,000 in-place reloads); memory goes back to the
kernel with the old process. A reload is a handover:

1. a new generation of workers is forked; each loads the rules and says so;
2. once all have, they start accepting on their slot's socket, the very socket the old worker
   of the slot accepts on, so no connection waiting in its queue is lost;
3. then the old workers drain (:meth:`ProxyServer.drain`): no more accepting, each keep-alive
   connection's next answer says ``Connection: close``, and they exit when done.

If a new worker cannot load the rules, the new generation is stopped and the old one goes on
serving. SIGTERM/SIGINT stop every worker gracefully. A worker that dies is replaced; when the
first generation, or a replacement, cannot start at all, the proxy stops with status 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import FrameType

from yoroi.errors import YoroiError
from yoroi.modules.ips.frontend import ExchangeHook
from yoroi.modules.ips.proxy import InspectorFactory, ProxyConfig, ProxyServer, listening_socket

log = logging.getLogger(__name__)

STARTUP_FAILURE = 2  # the CLI's exit status for a runtime error
RESPAWN_PAUSE = 0.5  # seconds between restarts of a worker that keeps dying
HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)

# One byte each way on a worker's control socket.
LOADED, LISTENING = b"L", b"R"  # worker -> supervisor
GO, DRAIN = b"G", b"D"  # supervisor -> worker: start accepting; hand over and exit


def run(config: ProxyConfig, factory: InspectorFactory,
        on_exchange: ExchangeHook | None = None) -> int:
    """Serve with ``config.workers`` processes (at least one) until SIGTERM/SIGINT; the exit
    status. Errors opening the port are Yoroi errors."""
    return Supervisor(config, factory, on_exchange).run()


def slot_sockets(listen: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (the first one's, when asked for port 0)."""
    first = listening_socket(*listen)
    port = int(first.getsockname()[1])
    sockets = [first]
    try:
        sockets += [listening_socket(listen[0], port) for _ in range(count - 1)]
    except YoroiError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass
class Worker:
    """A worker process as the supervisor tracks it."""

    pid: int
    slot: int
    generation: int
    control: socket.socket
    started: float
    state: str = "loading"  # loading, loaded, starting, serving, draining


class Supervisor:
    """The parent of the worker processes: holds the port, hands over on reload."""

    def __init__(self, config: ProxyConfig, factory: InspectorFactory,
                 on_exchange: ExchangeHook | None) -> None:
        self.config = config
        self.factory = factory
        self.on_exchange = on_exchange
        self.workers: dict[int, Worker] = {}
        self.sockets: list[socket.socket] = []
        self.generation = 0  # the generation serving (0: none yet)
        self.pending: int | None = None  # the generation being started
        self.announce: int | None = None  # a reload finished once older workers have exited
        self.reload_wanted = False  # SIGHUP during a reload: another one after it
        self.stopping = False
        self.status = 0
        self.signals: list[int] = []
        self.selector = selectors.DefaultSelector()
        self.wakeup: tuple[int, int] = (-1, -1)

    def run(self) -> int:
        """Start the workers and supervise them; returns once all have exited."""
        self.sockets = slot_sockets(self.config.listen, max(1, self.config.workers))
        self.wakeup = wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in HANDLED}
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            self._start_generation()
            while self.workers:
                self._step(wake_r)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.selector.close()
            for fd in (wake_r, wake_w):
                os.close(fd)
            for sock in self.sockets:
                sock.close()
        return self.status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)  # acted on in the loop, which the wakeup fd interrupts

    def _step(self, wake_r: int) -> None:
        for key, _ in self.selector.select(timeout=1.0):
            if key.data is None:
                os.read(wake_r, 512)
            else:
                self._message(key.data)
        self._reap()
        signals, self.signals = self.signals, []
        for sig in signals:
            if sig in (signal.SIGTERM, signal.SIGINT):
                self._stop()
            elif sig == signal.SIGHUP and not self.stopping:
                if self.pending is None:
                    self._start_generation()
                else:
                    self.reload_wanted = True
        self._advance()

    # -- starting workers ----------------------------------------------------------------------

    def _start_generation(self) -> None:
        self.pending = max(self.generation, self.pending or 0) + 1
        for slot in range(len(self.sockets)):
            self._spawn(slot, self.pending)

    def _spawn(self, slot: int, generation: int) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            code = STARTUP_FAILURE
            try:
                code = self._child(slot, theirs)
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        worker = Worker(pid, slot, generation, ours, time.monotonic())
        self.workers[pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)

    def _child(self, slot: int, control: socket.socket) -> int:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
        self.selector.close()  # the supervisor's: closing this copy unregisters nothing
        for fd in self.wakeup:
            os.close(fd)
        for worker in self.workers.values():
            worker.control.close()
        for number, sock in enumerate(self.sockets):
            if number != slot:
                sock.close()
        try:
            server = ProxyServer(self.config, self.factory(), on_exchange=self.on_exchange)
        except YoroiError as exc:
            print(f"yoroi: error: {exc}", file=sys.stderr, flush=True)
            return STARTUP_FAILURE
        except BaseException:
            log.exception("ips proxy worker %d could not start", os.getpid())
            return STARTUP_FAILURE
        control.sendall(LOADED)
        if control.recv(1) != GO:
            return 0
        asyncio.run(serve_worker(server, self.sockets[slot], control))
        return 0

    # -- what the workers say -------------------------------------------------------------------

    def _message(self, worker: Worker) -> None:
        try:
            data = worker.control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker exited (reaped below) or closed its end
            self._forget(worker)
        elif LISTENING in data:
            worker.state = "serving"
        elif LOADED in data and worker.state == "loading":
            worker.state = "loaded"

    def _advance(self) -> None:
        """Move a reload on when its workers are ready; let replacements start at once."""
        for worker in self.workers.values():
            if worker.state == "loaded" and worker.generation == self.generation:
                self._tell(worker, GO, "starting")
        if self.pending is not None and not self.stopping:
            new = self._generation(self.pending)
            if all(worker.state == "loaded" for worker in new):
                for worker in new:
                    self._tell(worker, GO, "starting")
            elif all(worker.state == "serving" for worker in new):
                self._take_over(self.pending)
        if self.announce is not None and not any(
                worker.generation < self.announce for worker in self.workers.values()):
            for worker in self._generation(self.announce):
                log.info("ips proxy: worker %d: rules reloaded (%d)", worker.pid,
                         self.announce - 1)
            self.announce = None

    def _take_over(self, generation: int) -> None:
        for worker in self.workers.values():
            if worker.generation < generation and worker.state != "draining":
                self._tell(worker, DRAIN, "draining")
        first = self.generation == 0
        self.generation, self.pending = generation, None
        if first:
            log.info("ips proxy: %d worker(s) serving on port %d", len(self.sockets),
                     self.sockets[0].getsockname()[1])
        else:
            log.info("ips proxy: new rules in force (generation %d); the previous workers "
                     "finish their exchanges", generation)
            self.announce = generation
        if self.reload_wanted:
            self.reload_wanted = False
            self._start_generation()

    def _tell(self, worker: Worker, message: bytes, state: str) -> None:
        worker.state = state
        try:
            worker.control.send(message)
        except OSError:
            pass  # it is exiting: its exit is handled when reaped

    def _generation(self, generation: int) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == generation]

    # -- workers that exit ----------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._forget(worker)
                self._exited(worker, os.waitstatus_to_exitcode(wait_status))

    def _forget(self, worker: Worker) -> None:
        if worker.control.fileno() >= 0:
            self.selector.unregister(worker.control)
            worker.control.close()

    def _exited(self, worker: Worker, code: int) -> None:
        if self.stopping or worker.state == "draining":
            return
        if worker.generation == self.pending:
            self._abandon(f"worker {worker.pid} exited ({code}) before serving")
        elif worker.state != "serving":
            log.error("ips proxy: worker %d could not start; stopping", worker.pid)
            self.status = STARTUP_FAILURE
            self._stop()
        else:
            log.warning("ips proxy: worker %d exited (%d); starting another", worker.pid, code)
            if time.monotonic() - worker.started < RESPAWN_PAUSE:
                time.sleep(RESPAWN_PAUSE)
            self._spawn(worker.slot, worker.generation)

    def _abandon(self, reason: str) -> None:
        """A new generation failed: stop what started of it; the serving one stays."""
        assert self.pending is not None
        for worker in self._generation(self.pending):
            if worker.state in ("starting", "serving"):
                self._tell(worker, DRAIN, "draining")
            else:
                worker.state = "draining"
                _kill(worker.pid, signal.SIGTERM)
        self.pending = None
        if self.generation == 0:
            log.error("ips proxy: could not start: %s", reason)
            self.status = STARTUP_FAILURE
            self._stop()
            return
        log.error("ips proxy: reload failed, the current rules stay in force: %s", reason)
        if self.reload_wanted:
            self.reload_wanted = False
            self._start_generation()

    def _stop(self) -> None:
        self.stopping = True
        for pid in list(self.workers):
            _kill(pid, signal.SIGTERM)


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def serve_worker(server: ProxyServer, sock: socket.socket,
                       control: socket.socket) -> None:
    """A worker's loop: accept on ``sock`` until SIGTERM/SIGINT (stop) or the supervisor says
    DRAIN (hand over); the supervisor going away stops the worker too."""
    loop = asyncio.get_running_loop()
    await server.start(sock)
    control.setblocking(False)
    control.send(LISTENING)
    tasks: set[asyncio.Task[object]] = set()  # strong references until done

    def spawn(work: Callable[[], Coroutine[object, object, object]]) -> None:
        task = loop.create_task(work())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_control() -> None:
        try:
            data = control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if DRAIN in data or not data:
            loop.remove_reader(control.fileno())
            spawn(server.drain if data else server.stop)

    loop.add_reader(control.fileno(), on_control)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, spawn, server.stop)
    await server.wait_stopped()
