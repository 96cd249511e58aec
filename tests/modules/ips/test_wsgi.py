"""The WSGI middleware inspects a Python application's exchanges as the proxy does."""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import setup_testing_defaults

from tests.modules.ips.proxy_support import MARKER, MarkerInspector
from yoroi.modules.ips.frontend import Action, Exchange, Limits, Mode
from yoroi.modules.ips.wsgi import YoroiWSGIMiddleware


class App:
    """Echoes the request as JSON; /leak answers HTML with the marker in two chunks."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.calls.append(body)
        if environ["PATH_INFO"] == "/leak":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b"<p>secret ", MARKER.encode() + b"</p>"]
        start_response("201 Created", [("Content-Type", "application/octet-stream")])
        return [json.dumps({"path": environ["PATH_INFO"], "body": body.decode()}).encode()]


def call(app: Any, method: str, path: str, body: bytes = b"",
         query: str = "") -> tuple[str, bytes]:
    """Drive a WSGI app like a server would; the status line and the body."""
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": query, "REMOTE_ADDR": "192.0.2.7",
                               "REMOTE_PORT": "5555", "wsgi.input": io.BytesIO(body),
                               "CONTENT_LENGTH": str(len(body)) if body else ""}
    setup_testing_defaults(environ)
    started: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        started.append(status)
        return lambda data: None

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return started[0], data


def test_clean_requests_reach_the_app_with_their_body() -> None:
    app, exchanges = App(), []
    guarded = YoroiWSGIMiddleware(app, MarkerInspector(), on_exchange=exchanges.append)
    status, body = call(guarded, "POST", "/form", b"a=1&b=2")
    assert status == "201 Created" and json.loads(body) == {"path": "/form", "body": "a=1&b=2"}
    assert exchanges[0].action == Action.ALLOWED and exchanges[0].status == 201
    assert exchanges[0].client == ("192.0.2.7", 5555)


def test_blocked_requests_never_reach_the_app() -> None:
    app, exchanges = App(), []
    guarded = YoroiWSGIMiddleware(app, MarkerInspector(), on_exchange=exchanges.append)
    assert call(guarded, "GET", "/search", query=f"q={MARKER}")[0] == "403 Forbidden"
    assert call(guarded, "POST", "/form", b"x=" + MARKER.encode())[0] == "403 Forbidden"
    assert app.calls == [] and [e.rule_ids for e in exchanges] == [(1001,), (1002,)]
    assert exchanges[0].url == f"/search?q={MARKER}"


def test_response_leak_is_blocked() -> None:
    exchanges: list[Exchange] = []
    guarded = YoroiWSGIMiddleware(App(), MarkerInspector(), on_exchange=exchanges.append)
    status, body = call(guarded, "GET", "/leak")
    assert status == "403 Forbidden" and MARKER.encode() not in body
    assert exchanges[0].rule_ids == (1004,)


def test_detect_mode_passes_and_reports() -> None:
    exchanges: list[Exchange] = []
    guarded = YoroiWSGIMiddleware(App(), MarkerInspector(), mode=Mode.DETECT,
                                  on_exchange=exchanges.append)
    status, body = call(guarded, "GET", "/leak")
    assert status == "200 OK" and body == f"<p>secret {MARKER}</p>".encode()
    assert exchanges[0].action == Action.DETECTED


def test_body_over_the_limit_is_answered_413() -> None:
    app = App()
    guarded = YoroiWSGIMiddleware(app, MarkerInspector(), limits=Limits(request_body=4))
    assert call(guarded, "POST", "/", b"abcdef")[0].startswith("413 ")
    assert app.calls == []


def test_generator_apps_and_close_are_honoured() -> None:
    closed: list[bool] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        try:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"one "
            yield b"two"
        finally:
            closed.append(True)

    assert call(YoroiWSGIMiddleware(app, MarkerInspector()), "GET", "/") == ("200 OK",
                                                                              b"one two")
    assert closed == [True]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_under_a_real_wsgi_server() -> None:
    guarded = YoroiWSGIMiddleware(App(), MarkerInspector())
    server = make_server("127.0.0.1", 0, guarded, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        results = []
        for path, body in (("/ok", b"hello"), (f"/{MARKER}", b"")):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
            conn.request("POST", path, body)
            response = conn.getresponse()
            results.append((response.status, response.read()))
            conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert results[0][0] == 201 and json.loads(results[0][1])["body"] == "hello"
    assert results[1] == (403, b"Request blocked.\n")
