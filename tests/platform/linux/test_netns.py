"""Network namespaces for real: created, joined by veth pairs, talked across, deleted."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from yoroi.errors import PlatformError, Unsupported
from yoroi.platform.linux.netns import NetNamespace, exists, namespaces
from yoroi.platform.linux.nftables import IP_HINT, find_tool


def _missing_facility() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        find_tool("ip", IP_HINT)
    except Unsupported as exc:
        return str(exc)
    return None


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing_facility() is not None, reason=str(_missing_facility())),
]

SERVER = """
import socket, sys
with socket.create_server((sys.argv[1], 0)) as server:
    server.settimeout(10)
    print(server.getsockname()[1], flush=True)
    connection, peer = server.accept()
    with connection:
        connection.settimeout(10)
        data = connection.recv(64)
        connection.sendall(data.upper() + b" from " + peer[0].encode())
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as client:
    client.sendall(b"hello")
    print(client.recv(64).decode())
"""

SLEEPER = "import time; time.sleep(60)"


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def test_created_with_loopback_up_and_deleted_on_exit() -> None:
    with NetNamespace() as namespace:
        assert namespace.name.startswith("yoroi-test-")
        assert namespace.name in namespaces()
        (lo,) = json.loads(namespace.ip("-j", "link", "show", "lo"))
        assert "UP" in lo["flags"]
    assert not exists(namespace.name)


def test_deleted_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), NetNamespace() as namespace:
        raise RuntimeError("boom")
    assert not exists(namespace.name)


def test_given_name_is_used() -> None:
    name = f"yoroi-test-named-{secrets.token_hex(2)}"
    with NetNamespace(name) as namespace:
        assert exists(name) and namespace.name == name
    assert not exists(name)


def test_attached_namespace_is_left_in_place() -> None:
    with NetNamespace() as owner:
        with NetNamespace(owner.name, create=False) as attached:
            assert attached.run(["true"]).returncode == 0
        assert exists(owner.name)


def test_attaching_to_a_missing_namespace_fails() -> None:
    with pytest.raises(PlatformError, match="does not exist"):
        NetNamespace("yoroi-test-never-made", create=False).__enter__()


def test_invalid_name_is_refused() -> None:
    with pytest.raises(PlatformError, match="invalid network namespace name"):
        NetNamespace("../etc")


def test_run_sees_only_the_namespace_interfaces() -> None:
    with NetNamespace() as namespace:
        result = namespace.run(["ip", "-j", "link", "show"], text=True)
        assert [link["ifname"] for link in json.loads(result.stdout)] == ["lo"]


def test_veth_pair_carries_tcp_between_namespaces() -> None:
    subnet = secrets.randbelow(250) + 1
    left_ip, right_ip = f"10.199.{subnet}.1", f"10.199.{subnet}.2"
    host_links = _host_links()
    with NetNamespace() as left, NetNamespace() as right:
        ends = left.add_veth_pair(right, f"{left_ip}/30", f"{right_ip}/30")
        assert not set(ends) & _host_links()
        server = right.popen(
            [sys.executable, "-c", SERVER, right_ip], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        port = server.stdout.readline().strip()

        reply = left.run([sys.executable, "-c", CLIENT, right_ip, port], text=True, timeout=15)

        assert reply.returncode == 0, reply.stderr
        assert reply.stdout.strip() == f"HELLO from {left_ip}"
        assert server.wait(timeout=10) == 0
    assert _host_links() == host_links


def test_processes_started_inside_end_with_the_namespace() -> None:
    with NetNamespace() as namespace:
        sleeper = namespace.popen([sys.executable, "-c", SLEEPER])
        deadline = time.monotonic() + 5
        while sleeper.pid not in namespace.pids() and time.monotonic() < deadline:
            time.sleep(0.02)  # ip enters the namespace, then execs python with the same pid
        assert sleeper.pid in namespace.pids()
    assert sleeper.poll() is not None
    assert not exists(namespace.name)
