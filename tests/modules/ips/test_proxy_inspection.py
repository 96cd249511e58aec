"""The proxy acts on the inspector's decisions phase by phase: blocks never reach the upstream,
detect mode forwards and reports, a reload swaps the rules for new exchanges only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.modules.ips.proxy_support import (
    MARKER,
    Client,
    MarkerInspection,
    MarkerInspector,
    UpstreamServer,
    upstream_server,
    url,
)
from yoroi.modules.ips.frontend import Action, Exchange, Mode
from yoroi.modules.ips.proxy import ProxyConfig, ProxyServer
from yoroi.modules.ips.proxy_upstream import Upstream
from yoroi.modules.ips.types import Decision, Headers, Inspection, Outcome


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with upstream_server() as server:
        yield server


async def start_proxy(upstream: UpstreamServer, inspector: object, mode: Mode = Mode.PREVENT,
                      **kwargs: object) -> tuple[ProxyServer, list[Exchange]]:
    exchanges: list[Exchange] = []
    config = ProxyConfig(("127.0.0.1", 0), Upstream.parse(url(upstream)), mode=mode, grace=1.0)
    proxy = ProxyServer(config, inspector, on_exchange=exchanges.append, **kwargs)  # type: ignore[arg-type]
    await proxy.start()
    return proxy, exchanges


async def test_blocked_uri_gets_403_and_never_reaches_upstream(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(upstream, MarkerInspector())
    client = await Client.open(proxy.address)
    blocked = await client.request("GET", f"/search?q={MARKER}")
    assert client.reusable()  # nothing left unread: the connection goes on
    fine = await client.request("GET", "/search?q=shoes")
    await client.close()
    await proxy.stop()
    assert blocked.status == 403 and blocked.body == b"Request blocked.\n"
    assert fine.status == 200
    assert [seen.path for seen in upstream.seen] == ["/search?q=shoes"]
    assert exchanges[0].action == Action.BLOCKED and exchanges[0].rule_ids == (1001,)
    assert exchanges[0].status == 403 and exchanges[0].client[0] == "127.0.0.1"


async def test_blocked_body_never_reaches_upstream(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(upstream, MarkerInspector())
    client = await Client.open(proxy.address)
    reply = await client.request("POST", "/comment", [b"text=hello ", MARKER.encode(), b"!"])
    after = await client.request("POST", "/comment", b"text=hello")
    await client.close()
    await proxy.stop()
    assert reply.status == 403 and after.status == 200
    assert [seen.body for seen in upstream.seen] == [b"text=hello"]
    assert exchanges[0].rule_ids == (1002,) and exchanges[0].action == Action.BLOCKED


async def test_block_before_the_body_closes_the_connection(upstream: UpstreamServer) -> None:
    proxy, _ = await start_proxy(upstream, MarkerInspector())
    client = await Client.open(proxy.address)
    reply = await client.request("POST", f"/{MARKER}", b"x" * 100_000)
    await client.close()
    await proxy.stop()
    assert reply.status == 403 and reply.headers["connection"] == "close"
    assert upstream.seen == []


async def test_response_phases_block_a_leak(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(upstream, MarkerInspector(status=503))
    client = await Client.open(proxy.address)
    leak = await client.request("GET", "/leak")
    header = await client.request("GET", "/evil-header")
    fine = await client.request("GET", "/big?100")
    await client.close()
    await proxy.stop()
    assert (leak.status, header.status, fine.status) == (503, 503, 200)
    assert MARKER.encode() not in leak.body
    assert [e.rule_ids for e in exchanges] == [(1004,), (1003,), ()]


async def test_detect_mode_forwards_and_reports(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(upstream, MarkerInspector(), mode=Mode.DETECT)
    client = await Client.open(proxy.address)
    reply = await client.request("POST", f"/?q={MARKER}", b"x")
    await client.close()
    await proxy.stop()
    assert reply.status == 200 and len(upstream.seen) == 1
    assert exchanges[0].action == Action.DETECTED and exchanges[0].rule_ids == (1001, 1004)


async def test_detect_decisions_of_the_engine_forward(upstream: UpstreamServer) -> None:
    proxy, exchanges = await start_proxy(upstream, MarkerInspector(outcome=Outcome.DETECT))
    client = await Client.open(proxy.address)
    reply = await client.request("GET", f"/{MARKER}")
    await client.close()
    await proxy.stop()
    assert reply.status == 200 and exchanges[0].action == Action.DETECTED


class BrokenInspection(MarkerInspection):
    """An engine that fails in phase 1."""

    def request_headers(self, method: str, uri: str, version: str,
                        headers: Headers) -> Decision | None:
        raise RuntimeError("engine bug")


class BrokenInspector(MarkerInspector):
    """Its inspections fail; every other ``begin`` fails too."""

    def begin(self, client: tuple[str, int], server: tuple[str, int]) -> Inspection:
        self.generation += 1
        if self.generation % 2 == 0:
            raise RuntimeError("begin bug")
        return BrokenInspection(self)


async def test_a_failing_engine_fails_open(upstream: UpstreamServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    proxy, exchanges = await start_proxy(upstream, BrokenInspector())
    client = await Client.open(proxy.address)
    replies = [await client.request("GET", f"/{MARKER}") for _ in range(2)]
    await client.close()
    await proxy.stop()
    assert [reply.status for reply in replies] == [200, 200]
    assert "engine bug" in caplog.text and "begin bug" in caplog.text


async def test_reload_swaps_rules_for_new_exchanges_only(upstream: UpstreamServer) -> None:
    permissive = MarkerInspector(outcome=Outcome.ALLOW)
    strict = MarkerInspector()
    proxy, exchanges = await start_proxy(upstream, permissive, factory=lambda: strict)
    slow_client = await Client.open(proxy.address)
    slow = asyncio.create_task(slow_client.request("POST", "/slow", MARKER.encode()))
    while not upstream.seen:  # the slow exchange is in flight, past its inspection
        await asyncio.sleep(0.01)
    assert await proxy.reload()
    client = await Client.open(proxy.address)
    after = await client.request("POST", "/", MARKER.encode())
    assert (await slow).status == 200
    assert after.status == 403
    await client.close()
    await slow_client.close()
    await proxy.stop()
    assert proxy.inspector is strict and len(permissive.inspections) == 1
