"""The reverse proxy refuses what a hardened HTTP server refuses: raw requests on loopback get
the right status, a short body and a closed connection; nothing reaches the upstream; each
refusal is reported as a blocked exchange with the reason."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.modules.ips.proxy_support import (
    MarkerInspector,
    UpstreamServer,
    raw_exchange,
    upstream_server,
    url,
)
from yoroi.modules.ips.frontend import Action, Exchange, Mode
from yoroi.modules.ips.proxy import ProxyConfig, ProxyServer
from yoroi.modules.ips.proxy_events import events_file_hook
from yoroi.modules.ips.proxy_strict import head_end, head_fault, malformed, unserved
from yoroi.modules.ips.proxy_upstream import Upstream
from yoroi.modules.ips.types import Outcome


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with upstream_server() as server:
        yield server


class Site:
    """A proxy in front of the echo upstream, with its reported exchanges."""

    def __init__(self, proxy: ProxyServer, inspector: MarkerInspector,
                 exchanges: list[Exchange]) -> None:
        self.proxy, self.inspector, self.exchanges = proxy, inspector, exchanges

    async def send(self, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, lower-case headers and body of the answer; the proxy must close after it."""
        answer = await raw_exchange(self.proxy.address, data)
        head, _, body = answer.partition(b"\r\n\r\n")
        line, *fields = head.split(b"\r\n")
        pairs = (field.split(b": ", 1) for field in fields)
        headers = {name.lower(): value for name, value in pairs}
        return int(line.split(b" ")[1]), headers, body


async def start_site(upstream: UpstreamServer, inspector: MarkerInspector,
                     mode: Mode = Mode.PREVENT, events: Path | None = None) -> Site:
    exchanges: list[Exchange] = []
    hook = events_file_hook(events) if events else exchanges.append
    config = ProxyConfig(("127.0.0.1", 0), Upstream.parse(url(upstream)), mode=mode, grace=1.0)
    proxy = ProxyServer(config, inspector, on_exchange=hook)
    await proxy.start()
    return Site(proxy, inspector, exchanges)


@pytest.fixture
async def site(upstream: UpstreamServer) -> AsyncIterator[Site]:
    site = await start_site(upstream, MarkerInspector())
    yield site
    await site.proxy.stop()


HOST = b"Host: app.example\r\n"
CLOSE = b"Connection: close\r\n\r\n"

REFUSED = [
    pytest.param(b"CONNECT 1.2.3.4:80 HTTP/1.1\r\n" + HOST + b"\r\n", 405, id="connect"),
    pytest.param(b"CONNECT www.example.com HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                 id="connect-without-port"),
    pytest.param(b"TRACE / HTTP/1.1\r\n" + HOST + b"\r\n", 405, id="trace"),
    pytest.param(b"GET / HTTP/0.9\r\n" + HOST + b"\r\n", 400, id="http-0.9"),
    pytest.param(b"GET / HTTP/0.8\r\n\r\n", 400, id="http-0.8"),
    pytest.param(b"GET / HTTP/3.0\r\n" + HOST + b"\r\n", 505, id="http-3.0"),
    pytest.param(b"GET / HTTP/1.2\r\n" + HOST + b"\r\n", 505, id="http-1.2"),
    pytest.param(b"GET / \r\n" + HOST + b"\r\n", 400, id="empty-version"),
    pytest.param(b"GET \\ HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="backslash-target"),
    pytest.param(b"GET app.example:80 HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                 id="authority-form-without-connect"),
    pytest.param(b"GET * HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="asterisk-without-options"),
    pytest.param(b"GET /a?b=1#tag HTTP/1.1\r\n" + HOST + b"\r\n", 400, id="fragment"),
    pytest.param(b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400, id="http-1.1-without-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, id="empty-host"),
    pytest.param(b"GET / HTTP/1.0\r\nHost: \r\n\r\n", 400, id="empty-host-http-1.0"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: localhost%00\r\n\r\n", 400, id="percent-nul-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: local\x00host\r\n\r\n", 400, id="nul-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: local\x01host\r\n\r\n", 400, id="control-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app example\r\n\r\n", 400, id="space-in-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, id="slash-in-host"),
    pytest.param(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="cl-and-te"),
    pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                 id="te-in-http-1.0"),
    pytest.param(b"GET / HTTP/1.1\nHost: app.example\n\n", 400, id="bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app.example\nX-A: 1\r\n\r\n", 400,
                 id="one-bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app.example\r\nX-A: 1\r2\r\n\r\n", 400,
                 id="bare-cr"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: app.example\r\nX-A: 1\r\n 2\r\n\r\n", 400,
                 id="obs-fold"),
]


@pytest.mark.parametrize(("request_bytes", "status"), REFUSED)
async def test_refused_with_a_short_answer_and_closed(
        site: Site, upstream: UpstreamServer, request_bytes: bytes, status: int) -> None:
    got, headers, body = await site.send(request_bytes)
    assert got == status
    assert headers[b"connection"] == b"close" and len(body) < 40
    assert upstream.seen == []
    [exchange] = site.exchanges
    assert exchange.status == status and exchange.action is Action.BLOCKED
    assert exchange.error is not None


async def test_405_names_the_allowed_methods(site: Site) -> None:
    _, headers, body = await site.send(b"TRACE / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert b"GET" in headers[b"allow"] and b"TRACE" not in headers[b"allow"]
    assert body == b"Method Not Allowed.\n"
    assert site.exchanges[0].error == "refused: method TRACE not allowed"


async def test_malformed_requests_never_reach_the_rules(site: Site) -> None:
    await site.send(b"GET /EVIL HTTP/1.1\r\nHost: localhost%00\r\n\r\n")
    assert site.inspector.inspections[0].phases == []
    assert site.exchanges[0].error == "malformed request: empty or invalid Host header"
    assert site.exchanges[0].url == "/EVIL" and site.exchanges[0].method == "GET"


async def test_unserved_requests_are_inspected_before_the_refusal(
        upstream: UpstreamServer) -> None:
    # Detect mode: the rule matches and is recorded, and the proxy still refuses the method.
    site = await start_site(upstream, MarkerInspector(Outcome.DETECT), Mode.DETECT)
    status, _, _ = await site.send(b"CONNECT EVIL.example:443 HTTP/1.1\r\n" + HOST + b"\r\n")
    await site.proxy.stop()
    assert status == 405 and site.inspector.inspections[0].phases == [1, 2]
    assert site.exchanges[0].rule_ids == (1001,)
    assert site.exchanges[0].action is Action.BLOCKED


async def test_a_blocking_rule_answers_before_the_method_refusal(site: Site) -> None:
    status, _, _ = await site.send(b"TRACE /EVIL HTTP/1.1\r\n" + HOST + CLOSE)
    assert status == 403 and site.exchanges[0].rule_ids == (1001,)


async def test_refusals_are_published_as_events(upstream: UpstreamServer,
                                                tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    site = await start_site(upstream, MarkerInspector(), events=events)
    await site.send(b"GET / HTTP/1.1\nHost: app.example\n\n")
    await site.send(b"GET / HTTP/1.1\r\n" + HOST + CLOSE)  # clean: not published by default
    await site.proxy.stop()
    [event] = [json.loads(line) for line in events.read_text().splitlines()]
    assert event["class_name"] == "HTTP Activity"
    assert event["status_detail"] == "malformed request: bare LF line end in the request head"
    assert event["http_response"]["code"] == 400 and "(blocked)" in event["message"]


ACCEPTED = [
    pytest.param(b"GET /a:b/c?x=1 HTTP/1.1\r\n" + HOST + b"\r\n", "/a:b/c?x=1", id="colon"),
    pytest.param(b"GET / HTTP/1.0\r\n\r\n", "/", id="http-1.0-without-host"),
    pytest.param(b"GET http://app.example/p HTTP/1.1\r\n" + HOST + b"\r\n",
                 "http://app.example/p", id="absolute-form"),
    pytest.param(b"GET ?x=1 HTTP/1.1\r\n" + HOST + b"\r\n", "/?x=1", id="bare-query"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", "/", id="ipv4-port"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "/", id="ipv6-port"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: my_host.example.\r\n\r\n", "/",
                 id="underscore-and-root"),
    pytest.param(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n\r\na\n\nb", "/",
                 id="bare-lf-in-body"),
]


@pytest.mark.parametrize(("request_bytes", "path"), ACCEPTED)
async def test_well_formed_requests_go_through(
        site: Site, upstream: UpstreamServer, request_bytes: bytes, path: str) -> None:
    answer = await raw_exchange(site.proxy.address,
                                request_bytes.replace(b"\r\n\r\n", b"\r\nConnection: close"
                                                      b"\r\n\r\n", 1))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [seen.path for seen in upstream.seen] == [path]


async def test_options_asterisk_goes_through(site: Site) -> None:
    status, headers, _ = await site.send(b"OPTIONS * HTTP/1.1\r\n" + HOST + CLOSE)
    assert status == 501 and headers[b"server"].startswith(b"BaseHTTP")  # the upstream's answer


async def test_pipelined_requests_are_each_checked(site: Site, upstream: UpstreamServer) -> None:
    good = b"GET /one HTTP/1.1\r\n" + HOST + b"\r\n"
    bad = b"GET /two HTTP/1.1\nHost: app.example\n\n"
    answer = await raw_exchange(site.proxy.address, good + good + bad + good)
    assert answer.count(b"HTTP/1.1 200 ") == 2 and answer.count(b"HTTP/1.1 400 ") == 1
    assert [seen.path for seen in upstream.seen] == ["/one", "/one"]


def parse(data: bytes) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


FAULTS = (None, "bare LF line end in the request head", "bare CR in the request head",
          "obs-fold (folded header line)")


def check_all(data: bytes) -> None:
    end = head_end(data)
    assert head_fault(data[:end] if end >= 0 else data) in FAULTS
    request = parse(data)
    if request is not None:
        for refusal in (malformed(request), unserved(request)):
            assert refusal is None or refusal.status in (400, 405, 505)


@given(st.binary(max_size=300))
def test_checks_never_raise_on_any_bytes(data: bytes) -> None:
    check_all(data)


@given(st.lists(st.sampled_from([b"GET", b"CONNECT", b"/", b"?", b"*", b"#", b" ", b"\r\n",
                                 b"\n", b"\r", b"HTTP/1.1", b"HTTP/0.9", b"Host: a", b"Host:",
                                 b"Content-Length: 1", b"Transfer-Encoding: chunked", b"\t",
                                 b":", b"%00"]), max_size=30))
def test_checks_never_raise_on_request_like_bytes(parts: list[bytes]) -> None:
    check_all(b"".join(parts))
