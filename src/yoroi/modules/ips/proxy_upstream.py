"""HTTP/1.1 over asyncio streams with h11, and the keep-alive pool of upstream connections."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from yoroi.errors import UsageError

READ_SIZE = 64 * 1024


class PeerClosed(Exception):
    """The other side closed (or reset) the connection in the middle of a message."""


class H11Stream:
    """One HTTP/1.1 connection: an h11 state machine fed from an asyncio stream pair."""

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, max_header_bytes: int = 64 * 1024) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=max_header_bytes)
        self.reader = reader
        self.writer = writer

    async def next_event(self, timeout: float) -> Any:
        """The next h11 event, reading (each read bounded by ``timeout``) as needed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(timeout):
                try:
                    data = await self.reader.read(READ_SIZE)
                except (ConnectionError, ssl.SSLError) as exc:
                    raise PeerClosed(str(exc)) from exc
            self.conn.receive_data(data)

    async def send(self, *events: Any) -> None:
        """Send events and wait until the peer has taken them (back-pressure)."""
        data = b"".join(self.conn.send(event) or b"" for event in events)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError) as exc:
            raise PeerClosed(str(exc)) from exc

    def reusable(self) -> bool:
        """Both sides finished the exchange cleanly and neither asked to close."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def close(self) -> None:
        """Close the transport without waiting (aborts a half-sent message)."""
        if not self.writer.is_closing():
            self.writer.close()


@dataclass(frozen=True)
class Upstream:
    """Where the proxy forwards: scheme, host, port and a path prefix."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """Parse ``http://host:port[/prefix]`` (or https); a bad URL is a usage error."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"upstream {url!r} is not an http:// or https:// URL with a host; "
                             "write e.g. http://127.0.0.1:8080")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise UsageError(f"upstream {url!r} has a bad port: {exc}") from exc
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def netloc(self) -> str:
        """``host:port`` as a Host header value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class UpstreamPool:
    """Idle keep-alive connections to the upstream, reused last-in first-out."""

    def __init__(self, upstream: Upstream, connect_timeout: float, size: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.size = size
        self.tls = tls if tls is not None or upstream.scheme == "http" else (
            ssl.create_default_context())
        self._idle: deque[H11Stream] = deque()

    async def acquire(self) -> tuple[H11Stream, bool]:
        """A connection and whether it was reused (a reused one may have been closed by the
        upstream meanwhile: the caller retries once on a fresh one)."""
        while self._idle:
            stream = self._idle.pop()
            if not stream.reader.at_eof() and not stream.writer.is_closing():
                return stream, True
            stream.close()
        return await self.connect(), False

    async def connect(self) -> H11Stream:
        """A new connection; OSError or TimeoutError when the upstream is unreachable."""
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                self.upstream.host, self.upstream.port, ssl=self.tls,
                server_hostname=self.upstream.host if self.tls else None, limit=READ_SIZE)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return H11Stream(h11.CLIENT, reader, writer)

    def release(self, stream: H11Stream) -> None:
        """Back to the pool when it can carry another exchange, else closed."""
        if stream.reusable() and len(self._idle) < self.size:
            stream.conn.start_next_cycle()
            self._idle.append(stream)
        else:
            stream.close()

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()
