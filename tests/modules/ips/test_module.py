"""The IPS module in the agent: a proxy per site, events on the bus, bans asked for."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import wait_until
from yoroi.agent.daemon import Agent
from yoroi.events.model import DetectionFinding, Event, NetworkRemediationActivity
from yoroi.home import Home
from yoroi.modules import module_classes, policy_sections


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"hello from the application"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_ips_module_blocks_reports_and_asks_for_a_ban(upstream: str, tmp_path: Path) -> None:
    port = free_port()
    policy = f"""
agent: {{status_interval: 0}}
ips:
  enabled: true
  sites: [{{listen: "127.0.0.1:{port}", upstream: "{upstream}"}}]
  ban: {{after: 2, window: 1m, ttl: 10m}}
"""
    classes = module_classes()
    agent = Agent(Home.resolve(tmp_path), classes, policy_sections(classes), policy_text=policy,
                  say=lambda _: None)
    seen: list[Event] = []
    agent.bus.subscribe(seen.append, (), "test")
    task = asyncio.create_task(agent.run())
    try:
        await wait_until(lambda: "ips" in agent.runners
                         and agent.runners["ips"].status().counters.get("rules", 0) > 0,
                         timeout=60)
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(get, f"{base}/shop?item=blue+shirt") == 200
        attack = f"{base}/shop?item=1%27%20OR%201%3D1%20UNION%20SELECT%20password%20FROM%20users--"
        assert await asyncio.to_thread(get, attack) == 403
        assert await asyncio.to_thread(get, attack) == 403
        await wait_until(lambda: any(isinstance(e, NetworkRemediationActivity) for e in seen))
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    findings = [e for e in seen if isinstance(e, DetectionFinding)]
    rule_ids = {f.finding_info.analytic.uid for f in findings if f.finding_info.analytic}
    assert "942100" in rule_ids or any(r and r.startswith("942") for r in rule_ids)
    [ban] = [e for e in seen if isinstance(e, NetworkRemediationActivity)]
    assert ban.src_endpoint is not None and ban.src_endpoint.ip == "127.0.0.1"
    assert ban.unmapped["outcome"] == "refused"  # loopback is never banned
    assert ban.unmapped["requested_by"] == "ips"
