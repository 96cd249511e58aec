"""The reverse proxy's exchanges: read a request, inspect it phase by phase, forward it upstream
over a pooled keep-alive connection, inspect and relay the response.

Requests a hardened server refuses are answered before the rules see them, or after the rules
inspected them (see :mod:`~yoroi.modules.ips.proxy_strict`), and the connection is closed.
The request body is held (up to the limit) so that phase 2 rules see all of it before a byte
goes upstream; the response body streams through, with its first ``response_inspect`` bytes
held back for phase 4 when its type is one ModSecurity inspects.
"""

from __future__ import annotations

import asyncio
import socket
import time
from http import HTTPStatus
from typing import Any

import h11

from yoroi.modules.ips.frontend import (
    HOP_BY_HOP,
    Action,
    Exchange,
    ExchangeHook,
    Limits,
    Mode,
    begin,
    blocked_answer,
    inspect_response_body,
    report,
)
from yoroi.modules.ips.proxy_strict import (
    ALLOW,
    ClientStream,
    Refusal,
    malformed,
    unserved,
    upstream_target,
)
from yoroi.modules.ips.proxy_upstream import H11Stream, PeerClosed, UpstreamPool
from yoroi.modules.ips.types import Decision, Inspector

Address = tuple[str, int]
RawHeaders = list[tuple[bytes, bytes]]

# Replaced, not forwarded: we frame the body ourselves and speak for the client to the upstream.
REPLACED = frozenset({"content-length", "expect", "x-forwarded-for", "x-forwarded-proto",
                      "x-forwarded-host"})

DRAIN_LIMIT = 64 * 1024  # the most of an unread request body we read to keep a connection
DRAIN_TIMEOUT = 1.0


def address(writer: asyncio.StreamWriter, name: str) -> Address:
    """The (host, port) of a socket end; IPv6 addresses lose their flow and scope fields."""
    value = writer.get_extra_info(name)
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return ("", 0)


def connection_tokens(headers: RawHeaders) -> frozenset[str]:
    """Header names listed in ``Connection``: hop-by-hop for this message only."""
    tokens = (token.strip().lower() for name, value in headers if name.lower() == b"connection"
              for token in value.decode("latin-1").split(","))
    return frozenset(token for token in tokens if token)


def forwardable(headers: RawHeaders, also: frozenset[str] = frozenset()) -> RawHeaders:
    """The end-to-end headers of a message."""
    dropped = HOP_BY_HOP | connection_tokens(headers) | also
    return [(name, value) for name, value in headers if name.decode("latin-1").lower()
            not in dropped]


def as_text(headers: RawHeaders) -> list[tuple[str, str]]:
    """Headers as the inspector takes them (ISO 8859-1 keeps every byte)."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def header(headers: RawHeaders, name: bytes) -> bytes | None:
    """The first value of a header, by lower-case name."""
    return next((value for key, value in headers if key.lower() == name), None)


class ProxyHandler:
    """Serves the connections of one listener: each is a loop of keep-alive exchanges."""

    def __init__(self, inspector: Inspector, pool: UpstreamPool, *, mode: Mode = Mode.PREVENT,
                 limits: Limits | None = None, on_exchange: ExchangeHook | None = None,
                 scheme: str = "http") -> None:
        self.inspector = inspector
        self.pool = pool
        self.mode = mode
        self.limits = limits or Limits()
        self.on_exchange = on_exchange
        self.scheme = scheme
        self.busy: dict[asyncio.Task[Any], bool] = {}  # connection task -> inside an exchange
        self.draining = False  # a newer worker took over: every answer closes its connection

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.busy[task] = False
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = ClientStream(reader, writer, self.limits.header_bytes)
        client, server = address(writer, "peername"), address(writer, "sockname")
        try:
            while await self._next_exchange(task, stream, client, server):
                stream.conn.start_next_cycle()
        finally:
            del self.busy[task]
            stream.close()

    async def _next_exchange(self, task: asyncio.Task[Any], stream: ClientStream, client: Address,
                             server: Address) -> bool:
        """Serve one exchange; whether the connection can carry another."""
        try:
            event = await stream.next_event(self.limits.client_idle)
        except (TimeoutError, PeerClosed):
            return False
        except h11.RemoteProtocolError as exc:
            await self._malformed(stream, exc, client, server)
            return False
        if not isinstance(event, h11.Request):
            return False
        self.busy[task] = True
        try:
            await ProxyExchange(self, stream, event, client, server).run()
        finally:
            self.busy[task] = False
        return stream.reusable()

    async def _malformed(self, stream: ClientStream, exc: h11.RemoteProtocolError, client: Address,
                         server: Address) -> None:
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
        body = b"Bad request.\n"
        if stream.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                       ("Connection", "close")]
            try:
                await stream.send(h11.Response(status_code=status, headers=headers),
                                  h11.Data(data=body), h11.EndOfMessage())
            except (PeerClosed, h11.LocalProtocolError):
                pass
        report(self.on_exchange, Exchange(client, server, "", "", "", status, Action.BLOCKED,
                                          scheme=self.scheme, error=f"malformed request: {exc}"))


class ProxyExchange:
    """One request and its response through the proxy."""

    def __init__(self, handler: ProxyHandler, stream: ClientStream, request: h11.Request,
                 client: Address, server: Address) -> None:
        self.handler = handler
        self.limits = handler.limits
        self.stream = stream
        self.request = request
        self.raw_headers: RawHeaders = list(request.headers.raw_items())
        self.client, self.server = client, server
        self.tracker = begin(handler.inspector, client, server, handler.mode)
        self.status = 0
        self.request_bytes = self.response_bytes = 0
        self.error: str | None = None
        self.refused = False
        self.started = time.perf_counter()

    async def run(self) -> None:
        """Inspect, forward and relay; the hook hears of it whatever happens."""
        try:
            await self._run()
        except PeerClosed as exc:
            self.error = self.error or f"connection lost: {exc}"
            self.stream.close()
        finally:
            self._report()

    async def _run(self) -> None:
        inspection = self.tracker.inspection
        req = self.request
        refusal = malformed(req, self.stream.fault)
        if refusal is not None:
            return await self.refuse_request(refusal, "malformed request")
        decision = self.tracker.check(lambda: inspection.request_headers(
            req.method.decode("latin-1"), req.target.decode("latin-1"),
            req.http_version.decode("latin-1"), as_text(self.raw_headers)))
        if decision is not None:
            return await self.refuse(decision)
        body = await self.read_body()
        if body is None:
            return
        decision = self.tracker.check(inspection.request_end)
        if decision is not None:
            return await self.refuse(decision)
        refusal = unserved(req)
        if refusal is not None:
            return await self.refuse_request(refusal, "refused")
        await self.forward(body)

    async def read_body(self) -> bytes | None:
        """The whole request body (inspected chunk by chunk), or None once answered."""
        length = header(self.raw_headers, b"content-length")
        if length is not None and int(length) > self.limits.request_body:
            await self.fail(413, "request body over the limit")
            return None
        if self.stream.conn.they_are_waiting_for_100_continue:
            await self.stream.send(h11.InformationalResponse(status_code=100, headers=[],
                                                             reason=b"Continue"))
        chunks: list[bytes] = []
        while True:
            try:
                event = await self.stream.next_event(self.limits.client_idle)
            except TimeoutError:
                await self.fail(408, "request body timed out")
                return None
            except h11.RemoteProtocolError as exc:
                await self.fail(400, f"malformed request body: {exc}")
                return None
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            if not isinstance(event, h11.Data):
                raise PeerClosed("client closed in the request body")
            self.request_bytes += len(event.data)
            if self.request_bytes > self.limits.request_body:
                await self.fail(413, "request body over the limit")
                return None
            chunks.append(event.data)
            self.tracker.feed(self.tracker.inspection.request_body, event.data)

    def upstream_request(self, body: bytes) -> h11.Request:
        """The request as the upstream gets it: end-to-end headers, our framing, X-Forwarded-*."""
        headers = forwardable(self.raw_headers, REPLACED)
        host = header(self.raw_headers, b"host")
        if host is None:
            host = self.handler.pool.upstream.netloc.encode()
            headers.append((b"Host", host))
        earlier = [v for k, v in self.raw_headers if k.lower() == b"x-forwarded-for"]
        headers.append((b"X-Forwarded-For", b", ".join([*earlier, self.client[0].encode()])))
        headers.append((b"X-Forwarded-Proto", self.handler.scheme.encode()))
        headers.append((b"X-Forwarded-Host", host))
        framed = header(self.raw_headers, b"content-length") or header(
            self.raw_headers, b"transfer-encoding")
        if body or framed is not None:
            headers.append((b"Content-Length", str(len(body)).encode()))
        target = self.handler.pool.upstream.path.encode() + upstream_target(self.request.target)
        return h11.Request(method=self.request.method, target=target, headers=headers)

    async def forward(self, body: bytes) -> None:
        """Send upstream (retrying once when a pooled connection turns out closed), relay."""
        request = self.upstream_request(body)
        pool = self.handler.pool
        for attempt in (1, 2):
            try:
                upstream, reused = await pool.acquire()
            except (OSError, TimeoutError) as exc:
                return await self.fail(502, f"upstream unreachable: {exc}")
            try:
                await upstream.send(request, h11.Data(data=body), h11.EndOfMessage())
                response = await self.upstream_head(upstream)
            except TimeoutError:
                upstream.close()
                return await self.fail(504, "upstream timed out")
            except (PeerClosed, h11.RemoteProtocolError) as exc:
                upstream.close()
                if reused and attempt == 1:
                    continue
                return await self.fail(502, f"upstream failed: {exc}")
            return await self.relay(upstream, response)

    async def upstream_head(self, upstream: H11Stream) -> h11.Response:
        """The final response head (1xx interim responses are dropped)."""
        while True:
            event = await upstream.next_event(self.limits.upstream_read)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise PeerClosed("upstream closed before answering")

    async def relay(self, upstream: H11Stream, response: h11.Response) -> None:
        """Inspect the response head and body prefix, then stream it to the client."""
        try:
            await self._relay(upstream, response)
        except TimeoutError:
            self.error = "upstream timed out in the response body"
            self.stream.close()
        except (PeerClosed, h11.RemoteProtocolError) as exc:
            self.error = f"upstream failed in the response body: {exc}"
            self.stream.close()
        finally:
            if self.stream.writer.is_closing():
                upstream.close()
            self.handler.pool.release(upstream)

    async def _relay(self, upstream: H11Stream, response: h11.Response) -> None:
        inspection = self.tracker.inspection
        headers = forwardable(list(response.headers.raw_items()))
        text = as_text(headers)
        decision = self.tracker.check(lambda: inspection.response_headers(
            response.status_code, response.http_version.decode("latin-1"), text))
        held: list[bytes] = []
        done = False
        if decision is None and inspect_response_body(text) and self.request.method != b"HEAD":
            held, done = await self.hold_prefix(upstream)
        if decision is None:
            decision = self.tracker.check(inspection.response_end)
        if decision is not None:
            upstream.close()
            return await self.refuse(decision)
        self.status = response.status_code
        if self.handler.draining:
            headers.append((b"Connection", b"close"))
        # The head, the held prefix and (when that was all) the end go out in one write.
        events: list[Any] = [h11.Response(status_code=response.status_code, headers=headers,
                                          reason=response.reason)]
        events += [h11.Data(data=chunk) for chunk in held]
        self.response_bytes += sum(len(chunk) for chunk in held)
        if done:
            events.append(h11.EndOfMessage())
        await self.stream.send(*events)
        while not done:
            event = await upstream.next_event(self.limits.upstream_read)
            if isinstance(event, h11.Data):
                await self.send_data(event.data)
            elif isinstance(event, h11.EndOfMessage):
                done = True
                await self.stream.send(h11.EndOfMessage())
            else:
                raise PeerClosed("upstream closed in the response body")

    async def hold_prefix(self, upstream: H11Stream) -> tuple[list[bytes], bool]:
        """Read (and inspect) up to the inspection limit; the chunks and whether that was all."""
        held: list[bytes] = []
        size = 0
        while size < self.limits.response_inspect:
            event = await upstream.next_event(self.limits.upstream_read)
            if isinstance(event, h11.EndOfMessage):
                return held, True
            if not isinstance(event, h11.Data):
                raise PeerClosed("upstream closed in the response body")
            room = self.limits.response_inspect - size
            self.tracker.feed(self.tracker.inspection.response_body, event.data[:room])
            held.append(event.data)
            size += len(event.data)
        return held, False

    async def send_data(self, chunk: bytes) -> None:
        """One body chunk to the client."""
        self.response_bytes += len(chunk)
        await self.stream.send(h11.Data(data=chunk))

    async def refuse(self, decision: Decision) -> None:
        """Answer a blocked exchange in place of the upstream."""
        status, headers, body = blocked_answer(decision)
        await self.answer(status, headers, body)

    async def refuse_request(self, refusal: Refusal, kind: str) -> None:
        """Answer a request the proxy does not take, whatever the rules say, and close."""
        self.refused = True
        self.error = f"{kind}: {refusal.reason}"
        body = f"{h11_reason(refusal.status)}.\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body))), ("Connection", "close")]
        if refusal.status == 405:
            headers.append(("Allow", ALLOW))
        await self.answer(refusal.status, headers, body)

    async def fail(self, status: int, error: str) -> None:
        """Answer an exchange that could not be carried out (400, 408, 413, 502, 504)."""
        self.error = error
        body = f"{h11_reason(status)}.\n".encode()
        await self.answer(status, [("Content-Type", "text/plain; charset=utf-8"),
                                   ("Content-Length", str(len(body)))], body)

    async def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Send our own response; the connection closes if the request body was not read."""
        conn = self.stream.conn
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.stream.close()
            return
        # A refused request's body is not read: its answer closes the connection.
        if self.handler.draining or (conn.their_state is h11.SEND_BODY and not self.refused
                                     and not await self.drain()):
            headers = [*headers, ("Connection", "close")]
        self.status = status
        self.response_bytes += len(body)
        await self.stream.send(h11.Response(status_code=status, headers=headers),
                               h11.Data(data=body), h11.EndOfMessage())

    async def drain(self) -> bool:
        """Read and drop what is left of a small request body (so that the connection can
        carry on after our answer); False when it is too big or too slow to bother."""
        dropped = 0
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                while dropped <= DRAIN_LIMIT:
                    event = await self.stream.next_event(DRAIN_TIMEOUT)
                    if isinstance(event, h11.EndOfMessage):
                        return True
                    if not isinstance(event, h11.Data):
                        return False
                    dropped += len(event.data)
        except (TimeoutError, PeerClosed, h11.RemoteProtocolError):
            pass
        return False

    def _report(self) -> None:
        action, matches = self.tracker.close()  # the logging phase runs whoever listens
        if self.handler.on_exchange is None:
            return
        if self.refused:
            action = Action.BLOCKED
        host = header(self.raw_headers, b"host") or b""
        report(self.handler.on_exchange, Exchange(
            client=self.client, server=self.server,
            method=self.request.method.decode("latin-1"),
            url=self.request.target.decode("latin-1"), host=host.decode("latin-1"),
            status=self.status, action=action, matches=matches, scheme=self.handler.scheme,
            request_bytes=self.request_bytes, response_bytes=self.response_bytes,
            duration_ms=(time.perf_counter() - self.started) * 1000, error=self.error))


def h11_reason(status: int) -> str:
    """The standard reason phrase of a status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
