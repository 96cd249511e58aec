"""WSGI middleware: the same inspection as the reverse proxy, inside a Python application.

    application = YoroiWSGIMiddleware(application, inspector, on_exchange=publish)

The request body is read (up to the limit) and inspected before the application runs, which
then reads it from a fresh ``wsgi.input``. The application's ``start_response`` is held, with the
first ``response_inspect`` bytes of an inspected type, until phase 4 has spoken.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import quote

from yoroi.modules.ips.frontend import (
    Exchange,
    ExchangeHook,
    Limits,
    Mode,
    begin,
    blocked_answer,
    inspect_response_body,
    report,
)
from yoroi.modules.ips.types import Decision, Inspector

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
READ_SIZE = 64 * 1024


class YoroiWSGIMiddleware:
    """Inspects every exchange of a WSGI application with ``inspector``."""

    def __init__(self, app: WSGIApp, inspector: Inspector, *, mode: Mode = Mode.PREVENT,
                 limits: Limits | None = None, on_exchange: ExchangeHook | None = None) -> None:
        self.app = app
        self.inspector = inspector  # assign a new one to reload: new exchanges use it
        self.mode = mode
        self.limits = limits or Limits()
        self.on_exchange = on_exchange

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return WsgiExchange(self, environ, start_response).run()


def request_headers(environ: Environ) -> list[tuple[str, str]]:
    """The request's headers, rebuilt from the CGI-style environ keys."""
    headers = [(key[5:].replace("_", "-").title(), str(value)) for key, value in environ.items()
               if key.startswith("HTTP_")]
    for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length")):
        if environ.get(key):
            headers.append((name, str(environ[key])))
    return headers


def request_uri(environ: Environ) -> str:
    """The request target as received (servers that keep it say so), else rebuilt."""
    for key in ("REQUEST_URI", "RAW_URI"):
        if environ.get(key):
            return str(environ[key])
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    uri = quote(path.encode("latin-1")) or "/"
    return uri + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")


class WsgiExchange:
    """One exchange through the middleware; its ``run`` is the response iterable."""

    def __init__(self, middleware: YoroiWSGIMiddleware, environ: Environ,
                 start_response: StartResponse) -> None:
        self.middleware, self.limits = middleware, middleware.limits
        self.environ, self.start_response = environ, start_response
        self.client = (str(environ.get("REMOTE_ADDR", "")), int(environ.get("REMOTE_PORT") or 0))
        self.server = (str(environ.get("SERVER_NAME", "")), int(environ.get("SERVER_PORT") or 0))
        self.tracker = begin(middleware.inspector, self.client, self.server, middleware.mode)
        self.status = self.request_bytes = self.response_bytes = 0
        self.error: str | None = None
        self.started = time.perf_counter()
        self.head: tuple[str, list[tuple[str, str]], Any] | None = None
        self.written: list[bytes] = []

    def run(self) -> Iterator[bytes]:
        """Inspect the request, run the application, inspect and yield its response."""
        try:
            yield from self._run()
        finally:
            self._report()

    def _run(self) -> Iterator[bytes]:
        inspection = self.tracker.inspection
        version = str(self.environ.get("SERVER_PROTOCOL", "HTTP/1.1")).removeprefix("HTTP/")
        decision = self.tracker.check(lambda: inspection.request_headers(
            str(self.environ.get("REQUEST_METHOD", "GET")), request_uri(self.environ), version,
            request_headers(self.environ)))
        if decision is not None:
            return (yield from self.refuse(decision))
        body = self.read_body()
        if body is None:
            return (yield from self.answer(413, [("Content-Type", "text/plain")],
                                           b"Content Too Large.\n"))
        decision = self.tracker.check(inspection.request_end)
        if decision is not None:
            return (yield from self.refuse(decision))
        self.environ["wsgi.input"] = io.BytesIO(body)
        self.environ["CONTENT_LENGTH"] = str(len(body))
        result = self.middleware.app(self.environ, self.capture)
        try:
            yield from self.respond(iter(result))
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def read_body(self) -> bytes | None:
        """The whole request body, or None when it is over the limit."""
        stream = self.environ.get("wsgi.input")
        length = self.environ.get("CONTENT_LENGTH")
        if stream is None or not (length or self.environ.get("wsgi.input_terminated")):
            return b""
        wanted = int(length) if length else None
        if wanted is not None and wanted > self.limits.request_body:
            self.error = "request body over the limit"
            return None
        chunks: list[bytes] = []
        while wanted is None or self.request_bytes < wanted:
            size = READ_SIZE if wanted is None else min(READ_SIZE, wanted - self.request_bytes)
            chunk = stream.read(size)
            if not chunk:
                break
            self.request_bytes += len(chunk)
            if self.request_bytes > self.limits.request_body:
                self.error = "request body over the limit"
                return None
            chunks.append(chunk)
            self.tracker.feed(self.tracker.inspection.request_body, chunk)
        return b"".join(chunks)

    def capture(self, status: str, headers: list[tuple[str, str]],
                exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
        """The application's ``start_response``: held until the response is inspected."""
        if exc_info and exc_info[0] is not None and self.status:
            raise exc_info[1].with_traceback(exc_info[2])  # too late: headers already sent
        self.head = (status, list(headers), exc_info)
        return self.written.append

    def respond(self, body: Iterator[bytes]) -> Iterator[bytes]:
        """Hold the prefix, decide phases 3 and 4, then stream the rest."""
        held, done = list(self.written), False
        while self.head is None:  # start_response may come with the first chunk
            chunk = next(body, None)
            if chunk is None:
                raise RuntimeError("the WSGI application returned without start_response")
            held.append(chunk)
        status, headers, _ = self.head
        inspection = self.tracker.inspection
        decision = self.tracker.check(lambda: inspection.response_headers(
            int(status.split(None, 1)[0]), "1.1", headers))
        if decision is None and inspect_response_body(headers):
            done = self.hold_prefix(held, body)
        if decision is None:
            decision = self.tracker.check(inspection.response_end)
        if decision is not None:
            return (yield from self.refuse(decision))
        self.status = int(status.split(None, 1)[0])
        self.start_response(status, headers)
        for chunk in [*held, *([] if done else body)]:
            self.response_bytes += len(chunk)
            yield chunk

    def hold_prefix(self, held: list[bytes], body: Iterator[bytes]) -> bool:
        """Read (and inspect) up to the limit; whether that was the whole body."""
        size = sum(map(len, held))
        for chunk in held:
            self.tracker.feed(self.tracker.inspection.response_body, chunk)
        while size < self.limits.response_inspect:
            more = next(body, None)
            if more is None:
                return True
            room = self.limits.response_inspect - size
            self.tracker.feed(self.tracker.inspection.response_body, more[:room])
            held.append(more)
            size += len(more)
        return False

    def refuse(self, decision: Decision) -> Iterator[bytes]:
        """Answer in place of the application."""
        return self.answer(*blocked_answer(decision))

    def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> Iterator[bytes]:
        self.status, self.response_bytes = status, len(body)
        headers = [*headers] if any(k == "Content-Length" for k, _ in headers) else [
            *headers, ("Content-Length", str(len(body)))]
        self.start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        yield body

    def _report(self) -> None:
        action, matches = self.tracker.close()
        report(self.middleware.on_exchange, Exchange(
            client=self.client, server=self.server,
            method=str(self.environ.get("REQUEST_METHOD", "")), url=request_uri(self.environ),
            host=str(self.environ.get("HTTP_HOST", "")), status=self.status, action=action,
            matches=matches, scheme=str(self.environ.get("wsgi.url_scheme", "http")),
            request_bytes=self.request_bytes, response_bytes=self.response_bytes,
            duration_ms=(time.perf_counter() - self.started) * 1000, error=self.error))
