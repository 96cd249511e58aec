"""The /proc readers: parsers on known kernel output, then the real kernel on our own sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import Unsupported
from yoroi.platform.linux.system import (
    ListeningSocket,
    System,
    SystemLike,
    decode_address,
    parse_modules,
    parse_mountinfo,
    parse_net,
    sysctl_path,
)

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:0050 0100007F:D431 01 00000000:00000000 00:00000000 00000000   33        0 4343 1 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A \
00000000:00000000 00:00000000 00000000     0        0 99 1 0
"""
UDP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
  10: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000   100        0 55 2 0
  11: 0100007F:9C40 0100007F:0035 01 00000000:00000000 00:00000000 00000000   100        0 56 2 0
"""
MODULES = """\
nf_tables 364544 5 nft_chain_nat,nft_compat, Live 0x0000000000000000
vboxdrv 696320 2 vboxnetadp, Live 0xffffffffc0a00000 (OE)
loop 40960 0 - Loading 0x0000000000000000
garbage line
"""
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 27 0:30 / /mnt/my\\040disk rw - sysfs sysfs rw
31 27 0:31 / /run rw - tmpfs tmpfs rw
"""
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="reading other processes' fds needs root")


def test_decodes_native_endian_addresses() -> None:
    assert decode_address("0100007F") == "127.0.0.1"
    assert decode_address("00000000000000000000000001000000") == "::1"
    assert decode_address("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"


def test_tcp_tables_keep_only_listeners() -> None:
    found = parse_net(TCP, "tcp") + parse_net(TCP6, "tcp6")
    assert [s.key for s in found] == ["tcp/127.0.0.1:80", "tcp/0.0.0.0:22", "tcp6/[::1]:631"]
    assert found[0] == ListeningSocket("tcp", "127.0.0.1", 80, 0, 4242)


def test_udp_tables_keep_only_unconnected_sockets() -> None:
    assert [(s.key, s.uid) for s in parse_net(UDP, "udp")] == [("udp/0.0.0.0:68", 100)]


def test_modules_with_users_states_and_taints() -> None:
    modules = parse_modules(MODULES)
    assert sorted(modules) == ["loop", "nf_tables", "vboxdrv"]
    assert modules["nf_tables"].used_by == ("nft_chain_nat", "nft_compat")
    assert modules["vboxdrv"].taint == "(OE)"
    assert modules["loop"].state == "Loading" and modules["loop"].used_by == ()


def test_mountinfo_pseudo_file_systems_unescaped() -> None:
    assert parse_mountinfo(MOUNTINFO) == ["/proc", "/mnt/my disk"]


def test_sysctl_keys_swap_dots_and_slashes() -> None:
    assert sysctl_path("net.ipv4.conf.eth0/1.rp_filter") == "net/ipv4/conf/eth0.1/rp_filter"


@given(st.text())
def test_parsers_never_raise_on_garbage(text: str) -> None:
    parse_net(text, "tcp")
    parse_modules(text)
    parse_mountinfo(text)


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _bind(made: list[socket.socket], family: int, kind: int, host: str) -> int:
    sock = socket.socket(family, kind)
    made.append(sock)
    sock.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return int(sock.getsockname()[1])


@pytest.mark.root
@NEEDS_ROOT
def test_real_listeners_are_found_with_our_pid(listeners: list[socket.socket]) -> None:
    tcp = _bind(listeners, socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1")
    udp = _bind(listeners, socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")
    tcp6 = _bind(listeners, socket.AF_INET6, socket.SOCK_STREAM, "::1")
    found = {s.key: s for s in System().listening_sockets()}
    for key in (f"tcp/127.0.0.1:{tcp}", f"udp/127.0.0.1:{udp}", f"tcp6/[::1]:{tcp6}"):
        assert key in found
        assert found[key].pids == (os.getpid(),)
        assert found[key].uid == os.geteuid()


@pytest.mark.root
@NEEDS_ROOT
def test_a_connected_udp_socket_is_not_listening(listeners: list[socket.socket]) -> None:
    port = _bind(listeners, socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")
    listeners[0].connect(("127.0.0.1", 9))
    assert f"udp/127.0.0.1:{port}" not in {s.key for s in System().listening_sockets()}


def test_real_sysctls_match_the_sysctl_tool() -> None:
    values = System().sysctls(["kernel.randomize_va_space", "fs.protected_*", "no.such.key"])
    assert "no.such.key" not in values
    assert {"fs.protected_hardlinks", "fs.protected_symlinks"} <= set(values)
    expected = Path("/proc/sys/kernel/randomize_va_space").read_text().strip()
    if shutil.which("sysctl"):
        tool = subprocess.run(["sysctl", "-n", "kernel.randomize_va_space"], capture_output=True)
        expected = tool.stdout.decode().strip()
    assert values["kernel.randomize_va_space"] == expected


def test_real_kernel_modules_match_proc_or_are_unsupported() -> None:
    if not Path("/proc/modules").exists():
        with pytest.raises(Unsupported, match="without loadable modules"):
            System().kernel_modules()
        return
    listed = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    assert set(System().kernel_modules()) == listed


def test_real_pseudo_mounts_include_proc() -> None:
    assert "/proc" in System().pseudo_mounts()


def test_is_a_system_like() -> None:
    system: SystemLike = System()
    assert isinstance(system.sysctls([]), dict)
