"""The reverse proxy forwards faithfully: methods, headers, bodies (chunked too), keep-alive on
both sides, X-Forwarded-*, errors as 400/413/502."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.modules.ips.proxy_support import (
    Client,
    MarkerInspector,
    UpstreamServer,
    raw_exchange,
    upstream_server,
    url,
)
from yoroi.modules.ips.frontend import Action, Exchange, Limits
from yoroi.modules.ips.proxy import ProxyConfig, ProxyServer, parse_listen
from yoroi.modules.ips.proxy_upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with upstream_server() as server:
        yield server


async def start_proxy(upstream_url: str, inspector: MarkerInspector | None = None,
                      limits: Limits | None = None) -> tuple[ProxyServer, list[Exchange]]:
    exchanges: list[Exchange] = []
    config = ProxyConfig(("127.0.0.1", 0), Upstream.parse(upstream_url),
                         limits=limits or Limits(), grace=1.0)
    proxy = ProxyServer(config, inspector or MarkerInspector(), on_exchange=exchanges.append)
    await proxy.start()
    return proxy, exchanges


@pytest.fixture
async def proxied(upstream: UpstreamServer) -> AsyncIterator[tuple[ProxyServer, list[Exchange]]]:
    proxy, exchanges = await start_proxy(url(upstream))
    yield proxy, exchanges
    await proxy.stop()


async def test_get_and_post_reach_the_upstream_intact(
        upstream: UpstreamServer, proxied: tuple[ProxyServer, list[Exchange]]) -> None:
    proxy, exchanges = proxied
    client = await Client.open(proxy.address)
    got = await client.request("GET", "/a/b?x=1&y=%20z", headers=[("X-Custom", "Kept As-Is")])
    body = bytes(range(256)) * 40
    posted = await client.request("POST", "/upload", body,
                                  headers=[("Content-Type", "application/octet-stream")])
    await client.close()
    assert got.status == 200 and got.json()["path"] == "/a/b?x=1&y=%20z"
    assert got.json()["headers"]["X-Custom"] == "Kept As-Is"
    assert posted.status == 200
    assert upstream.seen[1].body == body and upstream.seen[1].method == "POST"
    assert [(e.method, e.url, e.status, e.action) for e in exchanges] == [
        ("GET", "/a/b?x=1&y=%20z", 200, Action.ALLOWED), ("POST", "/upload", 200, Action.ALLOWED)]


async def test_keep_alive_on_both_sides(upstream: UpstreamServer,
                                        proxied: tuple[ProxyServer, list[Exchange]]) -> None:
    proxy, _ = proxied
    client = await Client.open(proxy.address)
    for number in range(10):
        reply = await client.request("GET", f"/n/{number}")
        assert reply.status == 200 and client.reusable()
    await client.close()
    assert len(upstream.seen) == 10
    assert len({seen.port for seen in upstream.seen}) == 1  # one pooled upstream connection


async def test_chunked_request_body_is_forwarded_whole(
        upstream: UpstreamServer, proxied: tuple[ProxyServer, list[Exchange]]) -> None:
    proxy, _ = proxied
    client = await Client.open(proxy.address)
    reply = await client.request("PUT", "/doc", [b"first,", b"second,", b"third"])
    await client.close()
    assert reply.status == 200
    seen = upstream.seen[0]
    assert seen.body == b"first,second,third"
    assert seen.headers["Content-Length"] == "18" and "Transfer-Encoding" not in seen.headers


async def test_forwarded_headers(upstream: UpstreamServer,
                                 proxied: tuple[ProxyServer, list[Exchange]]) -> None:
    proxy, _ = proxied
    client = await Client.open(proxy.address)
    await client.request("GET", "/", headers=[("X-Forwarded-For", "203.0.113.9"),
                                              ("Connection", "keep-alive, X-Hop"),
                                              ("X-Hop", "must not pass")])
    await client.close()
    headers = upstream.seen[0].headers
    assert headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "app.example"
    assert headers["Host"] == "app.example"
    assert "X-Hop" not in headers


async def test_large_response_streams_through(
        upstream: UpstreamServer, proxied: tuple[ProxyServer, list[Exchange]]) -> None:
    proxy, exchanges = proxied
    client = await Client.open(proxy.address)
    reply = await client.request("GET", "/big?3000000")
    head = await client.request("HEAD", "/big?10")
    await client.close()
    assert reply.status == 200 and reply.body == b"x" * 3_000_000
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "10"
    assert exchanges[0].response_bytes == 3_000_000


async def test_malformed_request_is_answered_400(
        upstream: UpstreamServer, proxied: tuple[ProxyServer, list[Exchange]]) -> None:
    proxy, exchanges = proxied
    answer = await raw_exchange(proxy.address, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    answer = await raw_exchange(proxy.address, b"\x16\x03\x01garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.seen == []
    assert [e.status for e in exchanges] == [400, 400] and exchanges[0].error


async def test_body_over_the_limit_is_answered_413(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(url(upstream), limits=Limits(request_body=1000))
    client = await Client.open(proxy.address)
    declared = await client.request("POST", "/", b"x" * 1001)
    await client.close()
    client = await Client.open(proxy.address)
    chunked = await client.request("POST", "/", [b"x" * 600, b"y" * 600])
    await client.close()
    await proxy.stop()
    assert declared.status == 413 and chunked.status == 413
    assert upstream.seen == []


async def test_upstream_down_is_answered_502() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy, exchanges = await start_proxy(f"http://127.0.0.1:{port}")
    client = await Client.open(proxy.address)
    reply = await client.request("GET", "/")
    again = await client.request("GET", "/")  # the client connection stays usable
    await client.close()
    await proxy.stop()
    assert reply.status == 502 and again.status == 502
    assert exchanges[0].error is not None and "unreachable" in exchanges[0].error


async def test_upstream_timeout_is_answered_504(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(url(upstream), limits=Limits(upstream_read=0.1))
    client = await Client.open(proxy.address)
    reply = await client.request("GET", "/slow")
    await client.close()
    await proxy.stop()
    assert reply.status == 504


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:443") == ("::1", 443)
    assert parse_listen(":80") == ("0.0.0.0", 80)
