"""``yoroi ips proxy``: an asyncio reverse proxy that inspects every exchange before the
application sees it.

One :class:`ProxyServer` per worker process listens with ``SO_REUSEPORT`` (so several workers
share the port and the kernel spreads connections among them), terminates TLS when given the
site's certificate, and hands each connection to a
:class:`~yoroi.modules.ips.proxy_http.ProxyHandler`. ``reload()`` (SIGHUP) builds a new
inspector off the event loop and swaps it in for new exchanges; exchanges in flight finish on the
one they started with, and no connection is dropped. ``drain()`` hands a worker's traffic over to
a newer worker process (see :mod:`~yoroi.modules.ips.workers`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from yoroi.errors import UsageError, YoroiError
from yoroi.modules.ips.frontend import ExchangeHook, Limits, Mode
from yoroi.modules.ips.proxy_http import ProxyHandler
from yoroi.modules.ips.proxy_upstream import Upstream, UpstreamPool
from yoroi.modules.ips.types import Inspector

log = logging.getLogger(__name__)

InspectorFactory = Callable[[], Inspector]

DRAIN_IDLE = 1.0  # how long a draining worker waits for a keep-alive connection's next request


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) to a bind address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"listen address {value!r} is not HOST:PORT; write e.g. 0.0.0.0:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class ProxyConfig:
    """Everything a proxy worker needs besides its inspector."""

    listen: tuple[str, int]
    upstream: Upstream
    mode: Mode = Mode.PREVENT
    limits: Limits = field(default_factory=Limits)
    cert: Path | None = None
    key: Path | None = None
    workers: int = 1
    grace: float = 10.0  # how long stop() lets exchanges in flight finish

    @property
    def scheme(self) -> str:
        """``https`` when this proxy terminates TLS."""
        return "https" if self.cert else "http"


def tls_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server TLS context with the site's certificate chain (and key, if separate)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from exc
    return context


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket that other workers can bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock


class ProxyServer:
    """One worker of the reverse proxy: a listener, an upstream pool and the live inspector."""

    def __init__(self, config: ProxyConfig, inspector: Inspector, *,
                 factory: InspectorFactory | None = None,
                 on_exchange: ExchangeHook | None = None) -> None:
        self.config = config
        self.factory = factory
        self.tls = tls_context(config.cert, config.key) if config.cert else None
        pool = UpstreamPool(config.upstream, config.limits.upstream_connect,
                            config.limits.upstream_pool)
        self.handler = ProxyHandler(inspector, pool, mode=config.mode, limits=config.limits,
                                    on_exchange=on_exchange, scheme=config.scheme)
        self.reloads = 0
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    @property
    def inspector(self) -> Inspector:
        """The inspector new exchanges start with."""
        return self.handler.inspector

    @property
    def address(self) -> tuple[str, int]:
        """Where the proxy listens (the real port when it was asked for port 0)."""
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen (on ``sock`` if given, else on the configured address with SO_REUSEPORT)."""
        sock = sock or listening_socket(*self.config.listen)
        self._server = await asyncio.start_server(
            self.handler, sock=sock, ssl=self.tls, limit=64 * 1024,
            ssl_handshake_timeout=self.config.limits.client_idle if self.tls else None)

    def swap(self, inspector: Inspector) -> None:
        """New exchanges use ``inspector``; those in flight keep theirs."""
        self.handler.inspector = inspector
        self.reloads += 1

    async def reload(self) -> bool:
        """Build a new inspector (in a thread: loading rules takes a while) and swap it in;
        on failure keep the current one and say why. Also reloads the TLS certificate."""
        if self.factory is None:
            return False
        try:
            inspector = await asyncio.to_thread(self.factory)
            if self.tls is not None and self.config.cert is not None:
                self.tls.load_cert_chain(self.config.cert, self.config.key)
        except (YoroiError, OSError, ssl.SSLError) as exc:
            log.error("ips proxy: reload failed, the current rules stay in force: %s", exc)
            return False
        self.swap(inspector)
        log.info("ips proxy: rules reloaded (%d)", self.reloads)
        return True

    async def stop(self) -> None:
        """Stop listening, close idle keep-alive connections, let exchanges in flight finish
        (up to ``grace`` seconds), then close the rest."""
        await self._finish(idle=0.0)

    async def drain(self, idle: float = DRAIN_IDLE) -> None:
        """Hand over to a newer worker on the same port: stop listening, answer each
        connection's next request with ``Connection: close`` (clients then connect again, to
        the new worker), close connections still idle after ``idle`` seconds, and stop once
        all are done (or ``grace`` seconds have passed)."""
        self.handler.draining = True
        await self._finish(idle=idle)

    async def wait_stopped(self) -> None:
        """Return once ``stop()`` or ``drain()`` has finished."""
        await self._stopped.wait()

    async def _finish(self, idle: float) -> None:
        loop = asyncio.get_running_loop()
        if self._server is not None:
            # Stop accepting first and close the server one turn later: a connection accepted
            # in this turn gets its transport in the next, and asyncio drops it (unanswered,
            # reset at exit) if the server is closed by then.
            for sock in self._server.sockets:
                loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            self._server.close()
        started = loop.time()
        while self._open() and loop.time() - started <= self.config.grace:
            if loop.time() - started >= idle:
                for task, busy in list(self.handler.busy.items()):
                    if not busy:
                        task.cancel()
            await asyncio.sleep(0.02 if idle else 0.05)
        for task in list(self.handler.busy):
            task.cancel()
        self.handler.pool.close()
        self._stopped.set()

    def _open(self) -> bool:
        """Whether connections are still open: those being served, and those accepted whose
        handler has not started yet (a TLS handshake, or a task not yet run), which only the
        asyncio server counts: finishing without them would reset them."""
        accepted = getattr(self._server, "_active_count", 0) if self._server else 0
        return bool(self.handler.busy) or accepted > 0

    async def serve(self, sock: socket.socket | None = None) -> None:
        """Run until SIGTERM/SIGINT (graceful stop); SIGHUP reloads the rules."""
        await self.start(sock)
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[object]] = set()  # strong references until done

        def spawn(work: Callable[[], Coroutine[object, object, object]]) -> None:
            task = loop.create_task(work())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, spawn, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, spawn, self.stop)
        try:
            await self._stopped.wait()
        finally:
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
