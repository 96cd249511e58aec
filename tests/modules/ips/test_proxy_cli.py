"""``yoroi ips proxy`` end to end: the real ModSecurity engine with the CRS in front of an
upstream; attacks are blocked and written as OCSF events, honest requests pass."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.modules.ips.proxy_support import Client, upstream_server, url
from tests.modules.ips.test_proxy_workers import free_port


async def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    for _ in range(200):
        assert process.poll() is None, process.communicate()[1]
        try:
            client = await Client.open(("127.0.0.1", port))
            await client.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("yoroi ips proxy did not start listening")


async def test_the_real_engine_blocks_attacks_and_reports_them(tmp_path: Path) -> None:
    port, events = free_port(), tmp_path / "events.jsonl"
    with upstream_server() as upstream:
        process = subprocess.Popen(
            [sys.executable, "-m", "yoroi", "--home", str(tmp_path / "home"), "ips", "proxy",
             "--listen", f"127.0.0.1:{port}", "--upstream", url(upstream),
             "--events", str(events)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            await wait_listening(port, process)
            client = await Client.open(("127.0.0.1", port))
            honest = await client.request("POST", "/comments", b"name=O'Brien&text=Nice+post",
                                          headers=[("Content-Type",
                                                    "application/x-www-form-urlencoded"),
                                                   ("User-Agent", "Mozilla/5.0"),
                                                   ("Accept", "text/html")])
            await client.close()
            client = await Client.open(("127.0.0.1", port))
            attack = await client.request(
                "GET", "/items?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
                headers=[("User-Agent", "Mozilla/5.0"), ("Accept", "text/html")])
            await client.close()
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert honest.status == 200 and attack.status == 403
    assert [seen.path for seen in upstream.seen] == ["/comments"]
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    findings = [event for event in lines if event["class_uid"] == 2004]
    assert findings and all(f["action"] == "Denied" for f in findings)
    assert {"942100", "949110"} & {f["finding_info"]["analytic"]["uid"] for f in findings}
    assert findings[0]["src_endpoint"]["ip"] == "127.0.0.1"
    assert any(event["class_uid"] == 4002 and event["http_response"]["code"] == 403
               for event in lines)
