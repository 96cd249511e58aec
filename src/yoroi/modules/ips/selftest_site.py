"""The site that ``yoroi ips selftest`` sends its requests to, all in one process on loopback.

Yoroi's own reverse proxy (:class:`~yoroi.modules.ips.proxy.ProxyServer`, its h11 parser
and all) in front of a backend that answers as the CRS project's regression backend does
(httpbin: 200 on the routes it serves, 404 elsewhere). The proxy runs in detect mode because
the CRS project runs its suite with ``SecRuleEngine DetectionOnly``: every rule gets to run
and the status a test sees comes from the HTTP server or the backend, never from a block.
A test client writes each request's bytes as they are, reads the status line with a read
timeout (as go-ftw does: no answer is an "error"), and the rules that matched come from the
proxy's ``on_exchange`` hook for that client's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11

from yoroi.modules.ips.frontend import Exchange, Mode
from yoroi.modules.ips.ftw import Request
from yoroi.modules.ips.proxy import ProxyConfig, ProxyServer
from yoroi.modules.ips.proxy_upstream import H11Stream, PeerClosed, Upstream
from yoroi.modules.ips.types import Inspector, RuleMatch

LOOPBACK = "127.0.0.1"
READ_TIMEOUT = 2.0  # how long the test client waits for an answer before calling it an error
REPORT_WAIT = 2.0  # how long to wait for the proxy's report of a connection
BACKEND_IDLE = 30.0

# httpbin's routes (exact, and with a sub-path): what the CRS backend answers 200 to.
HTTPBIN_ROUTES = frozenset({
    "/", "/get", "/post", "/put", "/patch", "/delete", "/headers", "/ip", "/user-agent",
    "/uuid", "/html", "/json", "/xml", "/robots.txt", "/deny", "/cookies", "/gzip", "/deflate",
    "/brotli", "/encoding/utf8", "/cache", "/etag", "/forms/post", "/image", "/links",
    "/range", "/redirect-to", "/absolute-redirect", "/relative-redirect", "/redirect",
    "/response-headers", "/anything", "/status", "/base64", "/bytes", "/stream", "/delay",
    "/drip", "/basic-auth", "/bearer", "/digest-auth", "/hidden-basic-auth",
})


def backend_status(target: bytes) -> int:
    """The status httpbin gives a request target (``/status/N`` answers N)."""
    path = urlsplit(target.decode("latin-1")).path or "/"
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == "status" and parts[2].isdigit():
        return int(parts[2]) if 200 <= int(parts[2]) <= 599 else 400
    under = len(parts) > 2 and "/" + parts[1] in HTTPBIN_ROUTES
    return 200 if path in HTTPBIN_ROUTES or under else 404


class Backend:
    """The httpbin stand-in: keep-alive connections, each request read whole and answered."""

    def __init__(self) -> None:
        self.connections: dict[asyncio.Task[None], H11Stream] = {}

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = H11Stream(h11.SERVER, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = stream
        try:
            while isinstance(request := await stream.next_event(BACKEND_IDLE), h11.Request):
                await self.answer(stream, request)
                stream.conn.start_next_cycle()
        except (TimeoutError, PeerClosed, h11.ProtocolError):
            pass
        finally:
            del self.connections[task]
            stream.close()

    @staticmethod
    async def answer(stream: H11Stream, request: h11.Request) -> None:
        """Read the request body, then answer with httpbin's status."""
        while not isinstance(event := await stream.next_event(BACKEND_IDLE), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                raise PeerClosed("proxy closed in the request body")
        status = backend_status(request.target)
        body = f"<html><body>{status}</body></html>\n".encode()
        await stream.send(h11.Response(status_code=status, headers=[
            ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]))
        if request.method != b"HEAD":
            await stream.send(h11.Data(data=body))
        await stream.send(h11.EndOfMessage())

    async def close(self) -> None:
        """End every connection (their reads see the end of the stream) and wait for them."""
        tasks = list(self.connections)
        for stream in self.connections.values():
            stream.writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)


class Recorder:
    """The proxy's ``on_exchange`` hook: exchanges kept by the client port they came from."""

    def __init__(self) -> None:
        self.seen: dict[int, list[Exchange]] = {}
        self.arrived = asyncio.Event()

    def __call__(self, exchange: Exchange) -> None:
        self.seen.setdefault(exchange.client[1], []).append(exchange)
        self.arrived.set()

    async def take(self, port: int, timeout: float) -> list[Exchange]:
        """The exchanges of the connection from ``port`` (waiting for the first one)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while port not in self.seen:
                    self.arrived.clear()
                    await self.arrived.wait()
        return self.seen.pop(port, [])


class Site:
    """The running proxy and backend; ``exchange`` sends one test request through them."""

    def __init__(self, proxy: ProxyServer, recorder: Recorder) -> None:
        self.proxy = proxy
        self.recorder = recorder

    async def exchange(self, request: Request) -> tuple[int | None, tuple[RuleMatch, ...]]:
        """The status the client got (None: no answer) and every rule that matched."""
        reader, writer = await asyncio.open_connection(*self.proxy.address)
        port = int(writer.get_extra_info("sockname")[1])
        try:
            writer.write(request.wire())
            await writer.drain()
            status = await read_status(reader, request.method == "HEAD")
        except ConnectionError:
            status = None
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        exchanges = await self.recorder.take(port, REPORT_WAIT)
        return status, tuple(m for exchange in exchanges for m in exchange.matches)


async def read_status(reader: asyncio.StreamReader, head: bool) -> int | None:
    """The final status of the answer, or None when none came in time or it was not HTTP."""
    conn = h11.Connection(h11.CLIENT)
    # Only to put the client state machine where it expects an answer (a HEAD one has no body).
    conn.send(h11.Request(method=b"HEAD" if head else b"GET", target=b"/",
                          headers=[(b"Host", b"selftest")]))
    conn.send(h11.EndOfMessage())
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(64 * 1024))
                elif isinstance(event, h11.Response):
                    return int(event.status_code)
                elif not isinstance(event, h11.InformationalResponse):
                    return None
    except (TimeoutError, h11.RemoteProtocolError):
        return None


@contextlib.asynccontextmanager
async def regression_site(inspector: Inspector) -> AsyncIterator[Site]:
    """The backend and Yoroi's proxy (detect mode, ``inspector``) on loopback ports."""
    handler = Backend()
    backend = await asyncio.start_server(handler, LOOPBACK, 0)
    port = int(backend.sockets[0].getsockname()[1])
    recorder = Recorder()
    config = ProxyConfig(listen=(LOOPBACK, 0), upstream=Upstream("http", LOOPBACK, port),
                         mode=Mode.DETECT, grace=0.5)
    proxy = ProxyServer(config, inspector, on_exchange=recorder)
    await proxy.start()
    try:
        yield Site(proxy, recorder)
    finally:
        await proxy.stop()
        backend.close()
        await handler.close()
        await backend.wait_closed()
