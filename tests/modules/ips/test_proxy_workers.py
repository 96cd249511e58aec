"""Several worker processes share the port; SIGHUP reloads the rules under load without dropping
a request; SIGTERM stops them all cleanly. The proxy runs as a real process tree here."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.modules.ips.proxy_support import MARKER, Client, upstream_server, url

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from tests.modules.ips.proxy_support import MarkerInspector
    from yoroi.modules.ips.proxy import ProxyConfig, parse_listen
    from yoroi.modules.ips.proxy_upstream import Upstream
    from yoroi.modules.ips.workers import run

    listen, upstream, builds, served = sys.argv[1:5]

    def factory():
        time.sleep(0.05)  # loading rules takes a while
        with open(builds, "a") as out:
            out.write(f"{os.getpid()}\\n")
        return MarkerInspector()

    def on_exchange(exchange):
        with open(served, "a") as out:
            out.write(f"{os.getpid()} {exchange.status}\\n")

    config = ProxyConfig(parse_listen(listen), Upstream.parse(upstream), workers=2, grace=2.0)
    sys.exit(run(config, factory, on_exchange))
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def proxy_tree(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path, Path]]:
    port = free_port()
    builds, served = tmp_path / "builds", tmp_path / "served"
    with upstream_server() as upstream:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
        process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, f"127.0.0.1:{port}", url(upstream), str(builds),
             str(served)], cwd=REPO, env=env)
        try:
            yield process, port, builds, served
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def wait_ready(port: int, builds: Path, workers: int = 2) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if builds.exists() and len(builds.read_text().split()) >= workers:
            try:
                client = await Client.open(("127.0.0.1", port))
                await client.close()
                await asyncio.sleep(0.2)  # the other worker binds as well
                return
            except OSError:
                pass
        await asyncio.sleep(0.05)
    raise AssertionError("the proxy workers did not start")


async def test_two_workers_answer_on_one_port(
        proxy_tree: tuple[subprocess.Popen[bytes], int, Path, Path]) -> None:
    process, port, builds, served = proxy_tree
    await wait_ready(port, builds)
    statuses = []
    for number in range(40):  # a new connection each: the kernel spreads them
        client = await Client.open(("127.0.0.1", port))
        target = f"/?q={MARKER}" if number == 0 else f"/{number}"
        statuses.append((await client.request("GET", target)).status)
        await client.close()
    assert statuses == [403] + [200] * 39
    workers = {line.split()[0] for line in served.read_text().splitlines()}
    assert len(workers) == 2 and str(process.pid) not in workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


async def test_sighup_reload_under_load_drops_no_request(
        proxy_tree: tuple[subprocess.Popen[bytes], int, Path, Path]) -> None:
    process, port, builds, served = proxy_tree
    await wait_ready(port, builds)

    async def load(requests: int) -> list[int]:
        client = await Client.open(("127.0.0.1", port))
        statuses = [(await client.request("POST", "/", b"k=v")).status for _ in range(requests)]
        await client.close()
        return statuses

    async def reloads() -> None:
        for _ in range(5):
            await asyncio.sleep(0.05)
            process.send_signal(signal.SIGHUP)

    results = await asyncio.gather(*(load(125) for _ in range(4)), reloads())
    statuses = [status for batch in results[:4] for status in batch]
    assert len(statuses) == 500 and set(statuses) == {200}
    await asyncio.sleep(0.5)
    assert len(builds.read_text().split()) >= 2 + 2  # both workers rebuilt their rules
    assert process.poll() is None
