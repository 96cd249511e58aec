"""ASGI middleware: the same inspection as the reverse proxy, inside a Python application.

    app = YoroiASGIMiddleware(app, inspector, mode=Mode.PREVENT, on_exchange=publish)

The request body is read (up to the limit) and inspected before the application runs; the
application then reads it as usual. The response head and the first ``response_inspect`` bytes
of an inspected type are held back until phase 4 has spoken. WebSocket and lifespan scopes pass
through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from yoroi.modules.ips.frontend import (
    Exchange,
    ExchangeHook,
    Limits,
    Mode,
    Tracker,
    begin,
    blocked_answer,
    inspect_response_body,
    report,
)
from yoroi.modules.ips.types import Decision, Inspector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class YoroiASGIMiddleware:
    """Inspects every HTTP exchange of an ASGI application with ``inspector``."""

    def __init__(self, app: ASGIApp, inspector: Inspector, *, mode: Mode = Mode.PREVENT,
                 limits: Limits | None = None, on_exchange: ExchangeHook | None = None) -> None:
        self.app = app
        self.inspector = inspector  # assign a new one to reload: new exchanges use it
        self.mode = mode
        self.limits = limits or Limits()
        self.on_exchange = on_exchange

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await AsgiExchange(self, scope, receive, send).run()


def _address(value: Any) -> tuple[str, int]:
    if isinstance(value, list | tuple) and len(value) >= 2:
        return str(value[0]), int(value[1] or 0)
    return ("", 0)


def _text(headers: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in headers]


class AsgiExchange:
    """One HTTP exchange through the middleware."""

    def __init__(self, middleware: YoroiASGIMiddleware, scope: Scope, receive: Receive,
                 send: Send) -> None:
        self.middleware, self.limits = middleware, middleware.limits
        self.scope, self.receive, self.send = scope, receive, send
        self.client, self.server = _address(scope.get("client")), _address(scope.get("server"))
        self.tracker: Tracker = begin(middleware.inspector, self.client, self.server,
                                      middleware.mode)
        self.status = self.request_bytes = self.response_bytes = 0
        self.error: str | None = None
        self.started = time.perf_counter()
        self.response = ResponseGate(self)

    @property
    def uri(self) -> str:
        raw = self.scope.get("raw_path") or quote(self.scope.get("path", "/")).encode()
        query = self.scope.get("query_string") or b""
        return bytes(raw).decode("latin-1") + ("?" + bytes(query).decode("latin-1") if query
                                               else "")

    async def run(self) -> None:
        """Inspect the request, run the application, inspect its response."""
        try:
            await self._run()
        finally:
            self._report()

    async def _run(self) -> None:
        inspection = self.tracker.inspection
        version = str(self.scope.get("http_version", "1.1"))
        decision = self.tracker.check(lambda: inspection.request_headers(
            self.scope["method"], self.uri, version, _text(self.scope.get("headers", []))))
        if decision is not None:
            return await self.refuse(decision)
        body = await self.read_body()
        if body is None:
            return
        decision = self.tracker.check(inspection.request_end)
        if decision is not None:
            return await self.refuse(decision)
        await self.middleware.app(self.scope, Replay(body, self.receive), self.response.send)
        await self.response.finish()

    async def read_body(self) -> bytes | None:
        """The whole request body, or None once answered (413) or the client left."""
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.error = "client disconnected in the request body"
                return None
            chunk = bytes(message.get("body", b""))
            self.request_bytes += len(chunk)
            if self.request_bytes > self.limits.request_body:
                await self.answer(413, [("Content-Type", "text/plain")], b"Content Too Large.\n")
                self.error = "request body over the limit"
                return None
            chunks.append(chunk)
            self.tracker.feed(self.tracker.inspection.request_body, chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def refuse(self, decision: Decision) -> None:
        """Answer in place of the application."""
        await self.answer(*blocked_answer(decision))

    async def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.response_bytes = len(body)
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def _report(self) -> None:
        action, matches = self.tracker.close()
        host = next((v for k, v in _text(self.scope.get("headers", [])) if k.lower() == "host"),
                    "")
        report(self.middleware.on_exchange, Exchange(
            client=self.client, server=self.server, method=self.scope["method"], url=self.uri,
            host=host, status=self.status, action=action, matches=matches,
            scheme=self.scope.get("scheme", "http"), request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            duration_ms=(time.perf_counter() - self.started) * 1000, error=self.error))


class Replay:
    """The application's ``receive``: the buffered body once, then the server's own messages."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is None:
            return await self.receive()
        body, self.body = self.body, None
        return {"type": "http.request", "body": body, "more_body": False}


class ResponseGate:
    """The application's ``send``: holds the head and body prefix until phases 3 and 4 pass."""

    def __init__(self, exchange: AsgiExchange) -> None:
        self.exchange = exchange
        self.start: Message | None = None
        self.held: list[bytes] = []
        self.held_size = 0
        self.hold = False
        self.state = "head"  # head -> holding -> open (passing through) | blocked

    async def send(self, message: Message) -> None:
        if self.state == "blocked":
            return
        if self.state == "open":
            await self._pass(message)
        elif message["type"] == "http.response.start":
            await self._head(message)
        elif message["type"] == "http.response.body":
            await self._body(message)

    async def _head(self, message: Message) -> None:
        inspection = self.exchange.tracker.inspection
        headers = _text(message.get("headers", []))
        self.start = message
        decision = self.exchange.tracker.check(lambda: inspection.response_headers(
            int(message["status"]), str(self.exchange.scope.get("http_version", "1.1")), headers))
        if decision is not None:
            return await self._block(decision)
        self.hold = inspect_response_body(headers) and self.exchange.scope["method"] != "HEAD"
        self.state = "holding"
        if not self.hold:
            await self._decide(more=True)

    async def _body(self, message: Message) -> None:
        chunk = bytes(message.get("body", b""))
        room = self.exchange.limits.response_inspect - self.held_size
        self.exchange.tracker.feed(self.exchange.tracker.inspection.response_body, chunk[:room])
        self.held.append(chunk)
        self.held_size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or self.held_size >= self.exchange.limits.response_inspect:
            await self._decide(more)

    async def _decide(self, more: bool) -> None:
        decision = self.exchange.tracker.check(self.exchange.tracker.inspection.response_end)
        if decision is not None:
            return await self._block(decision)
        assert self.start is not None
        self.state = "open"
        await self._pass(self.start)
        if self.held or not more:
            await self._pass({"type": "http.response.body", "body": b"".join(self.held),
                              "more_body": more})
        self.held = []

    async def _block(self, decision: Decision) -> None:
        self.state = "blocked"
        await self.exchange.refuse(decision)

    async def _pass(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.exchange.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.exchange.response_bytes += len(message.get("body", b""))
        await self.exchange.send(message)

    async def finish(self) -> None:
        """The application returned: decide on what is still held (a head without a body)."""
        if self.state == "holding":
            await self._decide(more=False)
