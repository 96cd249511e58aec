"""Several worker processes share the port; SIGHUP hands over to new workers with the new rules
under load without dropping a request, and keeps the old ones when the new rules do not load;
SIGTERM stops them all cleanly. The proxy runs as a real process tree here."""

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.modules.ips.proxy_support import MARKER, Client, upstream_server, url

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent("""
    import logging, os, sys, time
    from tests.modules.ips.proxy_support import MarkerInspector
    from yoroi.errors import ConfigError
    from yoroi.modules.ips.proxy import ProxyConfig, parse_listen
    from yoroi.modules.ips.proxy_upstream import Upstream
    from yoroi.modules.ips.workers import run

    listen, upstream, builds, served, workers = sys.argv[1:6]
    logging.basicConfig(level=logging.INFO)

    def factory():
        time.sleep(0.05)  # loading rules takes a while
        if os.path.exists(builds + ".broken"):
            raise ConfigError("broken.conf: ModSecurity refused the rules")
        with open(builds, "a") as out:
            out.write(f"{os.getpid()}\\n")
        return MarkerInspector()

    def on_exchange(exchange):
        with open(served, "a") as out:
            out.write(f"{os.getpid()} {exchange.status}\\n")

    config = ProxyConfig(parse_listen(listen), Upstream.parse(upstream), workers=int(workers),
                         grace=2.0)
    sys.exit(run(config, factory, on_exchange))
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tree:
    """The proxy's process tree, and the files its workers write."""

    process: subprocess.Popen[bytes]
    port: int
    builds: Path  # the pid of each worker that loaded rules
    served: Path  # "pid status" per exchange
    log: Path  # the supervisor's and workers' stderr

    def loaded(self) -> list[str]:
        return self.builds.read_text().split() if self.builds.exists() else []

    def serving(self) -> set[str]:
        return {line.split()[0] for line in self.served.read_text().splitlines()}


@contextmanager
def proxy_process(tmp_path: Path, workers: int) -> Iterator[Tree]:
    port = free_port()
    tree = Tree(None, port, tmp_path / "builds", tmp_path / "served",  # type: ignore[arg-type]
                tmp_path / "log")
    with upstream_server() as upstream, tree.log.open("wb") as log:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
        tree.process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, f"127.0.0.1:{port}", url(upstream), str(tree.builds),
             str(tree.served), str(workers)], cwd=REPO, env=env, stderr=log)
        try:
            yield tree
        finally:
            if tree.process.poll() is None:
                tree.process.send_signal(signal.SIGTERM)
                try:
                    tree.process.wait(10)
                except subprocess.TimeoutExpired:
                    tree.process.kill()
                    tree.process.wait()


@pytest.fixture
def proxy_tree(tmp_path: Path) -> Iterator[Tree]:
    with proxy_process(tmp_path, workers=2) as tree:
        yield tree


async def wait_ready(tree: Tree, workers: int = 2) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(tree.loaded()) >= workers and "serving on port" in tree.log.read_text():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the proxy workers did not start: {tree.log.read_text()}")


async def wait_log(tree: Tree, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if tree.log.read_text().count(text) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log: {tree.log.read_text()}")


async def wait_replaced(pid: int, old: set[int], workers: int = 2) -> None:
    """Until the proxy has ``workers`` workers, none of them in ``old``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = children(pid)
        if len(now) == workers and not now & old:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers {children(pid)}, old ones {old}")


def children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task")
    return {int(child) for task in tasks.iterdir()
            for child in (task / "children").read_text().split()}


async def statuses_on_new_connections(port: int, targets: list[str]) -> list[int]:
    statuses = []
    for target in targets:  # a new connection each: the kernel spreads them
        client = await Client.open(("127.0.0.1", port))
        statuses.append((await client.request("GET", target)).status)
        await client.close()
    return statuses


async def load(port: int, requests: int) -> list[int]:
    """POSTs on a keep-alive connection, connecting again when the proxy closes it after an
    answer (``Connection: close``), as HTTP clients do."""
    client = await Client.open(("127.0.0.1", port))
    statuses = []
    for _ in range(requests):
        if not client.reusable() and statuses:
            await client.close()
            client = await Client.open(("127.0.0.1", port))
        statuses.append((await client.request("POST", "/", b"k=v")).status)
    await client.close()
    return statuses


async def test_two_workers_answer_on_one_port(proxy_tree: Tree) -> None:
    await wait_ready(proxy_tree)
    targets = [f"/?q={MARKER}"] + [f"/{number}" for number in range(1, 40)]
    assert await statuses_on_new_connections(proxy_tree.port, targets) == [403] + [200] * 39
    workers = proxy_tree.serving()
    assert len(workers) == 2 and str(proxy_tree.process.pid) not in workers
    proxy_tree.process.send_signal(signal.SIGTERM)
    assert proxy_tree.process.wait(10) == 0


async def test_sighup_reload_under_load_drops_no_request(proxy_tree: Tree) -> None:
    process, port = proxy_tree.process, proxy_tree.port
    await wait_ready(proxy_tree)
    first = children(process.pid)

    async def reloads() -> None:
        for _ in range(5):
            await asyncio.sleep(0.05)
            process.send_signal(signal.SIGHUP)

    results = await asyncio.gather(*(load(port, 125) for _ in range(4)), reloads())
    statuses = [status for batch in results[:4] for status in batch]
    assert len(statuses) == 500 and set(statuses) == {200}
    await wait_log(proxy_tree, "rules reloaded")
    assert len(proxy_tree.loaded()) >= 2 + 2  # new workers loaded the rules
    assert process.poll() is None
    await wait_replaced(process.pid, first)  # a SIGHUP during a reload makes one more
    assert await statuses_on_new_connections(port, [f"/?q={MARKER}", "/"]) == [403, 200]


async def test_bad_rules_on_reload_keep_the_old_workers_serving(proxy_tree: Tree) -> None:
    process, port = proxy_tree.process, proxy_tree.port
    await wait_ready(proxy_tree)
    first = children(process.pid)
    proxy_tree.builds.with_name("builds.broken").touch()
    process.send_signal(signal.SIGHUP)
    await wait_log(proxy_tree, "reload failed, the current rules stay in force")
    assert "broken.conf: ModSecurity refused the rules" in proxy_tree.log.read_text()
    await asyncio.sleep(0.2)
    assert children(process.pid) == first
    targets = [f"/?q={MARKER}"] + [f"/{number}" for number in range(1, 20)]
    assert await statuses_on_new_connections(port, targets) == [403] + [200] * 19
    assert {int(pid) for pid in proxy_tree.serving()} == first

    proxy_tree.builds.with_name("builds.broken").unlink()  # fixed: the next reload goes through
    process.send_signal(signal.SIGHUP)
    await wait_log(proxy_tree, "rules reloaded (1)", count=2)
    assert len(children(process.pid) - first) == 2
    assert await statuses_on_new_connections(port, ["/", f"/?q={MARKER}"]) == [200, 403]


async def test_one_worker_is_replaced_on_reload_too(tmp_path: Path) -> None:
    with proxy_process(tmp_path, workers=1) as tree:
        await wait_ready(tree, workers=1)
        (first,) = children(tree.process.pid)
        results = await asyncio.gather(load(tree.port, 300), reload_soon(tree.process))
        assert set(results[0]) == {200}
        await wait_log(tree, "rules reloaded (1)")
        (second,) = children(tree.process.pid)
        assert second != first and not Path(f"/proc/{first}").exists()
        assert set(await load(tree.port, 5)) == {200}
        assert {int(pid) for pid in tree.serving()} == {first, second}
        tree.process.send_signal(signal.SIGTERM)
        assert tree.process.wait(10) == 0


async def reload_soon(process: subprocess.Popen[bytes]) -> None:
    await asyncio.sleep(0.05)
    process.send_signal(signal.SIGHUP)
