"""The ASGI middleware inspects a Python application's exchanges as the proxy does."""

from __future__ import annotations

import json
from typing import Any

from tests.modules.ips.proxy_support import MARKER, MarkerInspector
from yoroi.modules.ips.asgi import Message, Receive, Scope, Send, YoroiASGIMiddleware
from yoroi.modules.ips.frontend import Action, Exchange, Limits, Mode


class App:
    """Echoes the request as JSON; /leak answers HTML with the marker in two chunks."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append(body)
        if scope["path"] == "/leak":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html")]})
            await send({"type": "http.response.body", "body": b"<p>secret ", "more_body": True})
            await send({"type": "http.response.body", "body": MARKER.encode() + b"</p>"})
            return
        payload = json.dumps({"path": scope["path"], "body": body.decode()}).encode()
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": payload})


async def call(app: Any, method: str, path: str, chunks: list[bytes] | None = None,
               query: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Drive an ASGI app like a server would; status, headers and body it sent."""
    chunks = chunks or [b""]
    pending = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
               for i, chunk in enumerate(chunks)]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [(b"host", b"app.example")], "client": ("192.0.2.7", 5555),
             "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return int(start["status"]), headers, body


async def test_clean_requests_reach_the_app_with_their_body() -> None:
    app, exchanges = App(), []
    guarded = YoroiASGIMiddleware(app, MarkerInspector(), on_exchange=exchanges.append)
    status, _, body = await call(guarded, "POST", "/form", [b"a=1&", b"b=2"])
    assert status == 201 and json.loads(body) == {"path": "/form", "body": "a=1&b=2"}
    assert exchanges[0].action == Action.ALLOWED and exchanges[0].client == ("192.0.2.7", 5555)


async def test_blocked_requests_never_reach_the_app() -> None:
    app, exchanges = App(), []
    guarded = YoroiASGIMiddleware(app, MarkerInspector(), on_exchange=exchanges.append)
    by_query = await call(guarded, "GET", "/search", query=f"q={MARKER}".encode())
    by_body = await call(guarded, "POST", "/form", [b"x=", MARKER.encode()])
    assert by_query[0] == by_body[0] == 403 and app.calls == []
    assert [e.rule_ids for e in exchanges] == [(1001,), (1002,)]
    assert exchanges[0].url == f"/search?q={MARKER}" and exchanges[0].status == 403


async def test_response_leak_is_blocked_before_a_byte_is_sent() -> None:
    app, exchanges = App(), []
    guarded = YoroiASGIMiddleware(app, MarkerInspector(status=500), on_exchange=exchanges.append)
    status, _, body = await call(guarded, "GET", "/leak")
    assert status == 500 and MARKER.encode() not in body
    assert exchanges[0].action == Action.BLOCKED and exchanges[0].rule_ids == (1004,)


async def test_detect_mode_passes_and_reports() -> None:
    exchanges: list[Exchange] = []
    guarded = YoroiASGIMiddleware(App(), MarkerInspector(), mode=Mode.DETECT,
                                  on_exchange=exchanges.append)
    status, _, body = await call(guarded, "GET", "/leak")
    assert status == 200 and body == f"<p>secret {MARKER}</p>".encode()
    assert exchanges[0].action == Action.DETECTED


async def test_body_over_the_limit_is_answered_413() -> None:
    app = App()
    guarded = YoroiASGIMiddleware(app, MarkerInspector(), limits=Limits(request_body=4))
    status, _, _ = await call(guarded, "POST", "/", [b"abc", b"def"])
    assert status == 413 and app.calls == []


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        return None

    await YoroiASGIMiddleware(app, MarkerInspector())({"type": "lifespan"}, nothing, ignore)
    assert seen == ["lifespan"]
