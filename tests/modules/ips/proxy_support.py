"""Test helpers for the IPS front ends: an inspector that reacts to a marker, a small threaded
HTTP/1.1 upstream that echoes what it got, and an h11 client over asyncio streams."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import h11

from yoroi.modules.ips.types import Decision, Headers, Inspection, Outcome, RuleMatch

MARKER = "EVIL"


class MarkerInspection:
    """Matches MARKER in the URI or a request header (phase 1), the request body (2), a response
    header (3) or the response body (4); rule id 1000 + phase."""

    def __init__(self, inspector: MarkerInspector) -> None:
        self.inspector = inspector
        self.request_data = bytearray()
        self.response_data = bytearray()
        self.matches: list[RuleMatch] = []
        self.phases: list[int] = []

    def _verdict(self, phase: int, hit: bool) -> Decision | None:
        self.phases.append(phase)
        if not hit:
            return None
        match = RuleMatch(1000 + phase, f"marker in phase {phase}", phase=phase)
        self.matches.append(match)
        return Decision(self.inspector.outcome, self.inspector.status, (match,))

    def request_headers(self, method: str, uri: str, version: str,
                        headers: Headers) -> Decision | None:
        hit = MARKER in uri or any(MARKER in value for _, value in headers)
        return self._verdict(1, hit)

    def request_body(self, chunk: bytes) -> None:
        self.request_data += chunk

    def request_end(self) -> Decision | None:
        return self._verdict(2, MARKER.encode() in self.request_data)

    def response_headers(self, status: int, version: str, headers: Headers) -> Decision | None:
        return self._verdict(3, any(MARKER in value for _, value in headers))

    def response_body(self, chunk: bytes) -> None:
        self.response_data += chunk

    def response_end(self) -> Decision | None:
        return self._verdict(4, MARKER.encode() in self.response_data)

    def close(self) -> tuple[RuleMatch, ...]:
        return tuple(self.matches)


class MarkerInspector:
    """An Inspector for tests: ``outcome`` BLOCK (prevent) or DETECT; keeps its inspections."""

    def __init__(self, outcome: Outcome = Outcome.BLOCK, status: int = 403,
                 generation: int = 0) -> None:
        self.outcome = outcome
        self.status = status
        self.generation = generation
        self.inspections: list[MarkerInspection] = []

    def begin(self, client: tuple[str, int], server: tuple[str, int]) -> Inspection:
        inspection = MarkerInspection(self)
        self.inspections.append(inspection)
        return inspection


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    port: int  # the proxy's source port: one per upstream connection


class UpstreamServer(ThreadingHTTPServer):
    """Records every request."""

    daemon_threads = True
    seen: list[Seen]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client (the proxy) that gave up waiting is part of the tests


class EchoHandler(BaseHTTPRequestHandler):
    """GET/POST/...: JSON echo; /leak: HTML with the marker; /big?N: N bytes of text;
    /slow: echo after 0.3 s; /evil-header: the marker in a response header."""

    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # head and body in one send (Nagle + delayed ACK would add 40 ms)
    server: UpstreamServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body,
                                     self.client_address[1]))
        kind, extra = "application/json", []
        if self.path == "/leak":
            kind, payload = "text/html", f"<p>secret {MARKER} data</p>".encode()
        elif self.path.startswith("/big?"):
            kind, payload = "text/plain", b"x" * int(self.path[5:])
        elif self.path == "/evil-header":
            payload, extra = b"{}", [("X-Note", MARKER)]
        else:
            if self.path == "/slow":
                time.sleep(0.3)
            payload = json.dumps({"method": self.command, "path": self.path,
                                  "headers": dict(self.headers.items()),
                                  "body": body.decode("latin-1")}).encode()
        self.send_response(200)
        for name, value in [("Content-Type", kind), *extra]:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


@contextmanager
def upstream_server() -> Iterator[UpstreamServer]:
    """An echo upstream on 127.0.0.1 in a thread; its URL is ``url(server)``."""
    server = UpstreamServer(("127.0.0.1", 0), EchoHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def url(server: UpstreamServer) -> str:
    """The upstream's base URL."""
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


@dataclass
class Reply:
    """A response as the client saw it (header names lower-case)."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """An HTTP/1.1 keep-alive client over one asyncio connection (h11)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, address: tuple[str, int], tls: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.open_connection(
            *address, ssl=tls, server_hostname="localhost" if tls else None)
        return cls(reader, writer)

    async def request(self, method: str, target: str, body: bytes | Sequence[bytes] = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> Reply:
        """Send one request (a list body is sent chunked) and read the whole response."""
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("Host", "app.example"), *headers]
        chunks = [body] if isinstance(body, bytes) else list(body)
        if isinstance(body, bytes) and (body or method in ("POST", "PUT")):
            all_headers.append(("Content-Length", str(len(body))))
        elif not isinstance(body, bytes):
            all_headers.append(("Transfer-Encoding", "chunked"))
        events: list[Any] = [h11.Request(method=method, target=target, headers=all_headers)]
        events += [h11.Data(data=chunk) for chunk in chunks if chunk]
        self.writer.write(b"".join(self.conn.send(e) or b"" for e in [*events, h11.EndOfMessage()]))
        await self.writer.drain()
        return await self.response()

    async def response(self) -> Reply:
        reply: Reply | None = None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                raw = [(k.decode(), v.decode()) for k, v in event.headers.raw_items()]
                reply = Reply(event.status_code, {k.lower(): v for k, v in raw}, b"", raw)
            elif isinstance(event, h11.Data) and reply is not None:
                reply.body += event.data
            elif isinstance(event, h11.EndOfMessage) and reply is not None:
                return reply
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the response ended")

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes (or the timeout): for malformed requests."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()
