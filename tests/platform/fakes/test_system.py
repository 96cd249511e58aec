"""The fake system answers like the real reader from what a test puts in it."""

from __future__ import annotations

import pytest

from yoroi.errors import Unsupported
from yoroi.platform.fakes.system import FakeSystem
from yoroi.platform.linux.system import SystemLike


def test_sockets_are_listed_until_closed() -> None:
    system = FakeSystem()
    sock = system.listen("tcp6", "::", 22, pids=(812, 900))
    system.listen("udp", "0.0.0.0", 68)
    assert sock.key == "tcp6/[::]:22"
    assert [s.key for s in system.listening_sockets()] == ["tcp6/[::]:22", "udp/0.0.0.0:68"]
    system.close("tcp6", "::", 22)
    assert [s.key for s in system.listening_sockets()] == ["udp/0.0.0.0:68"]


def test_modules_and_a_kernel_without_them() -> None:
    system = FakeSystem()
    system.load_module("nf_tables", size=364544)
    assert system.kernel_modules()["nf_tables"].size == 364544
    with pytest.raises(Unsupported):
        FakeSystem(modules_supported=False).kernel_modules()


def test_sysctl_patterns_glob_and_skip_missing_keys() -> None:
    system = FakeSystem(sysctl={"fs.protected_fifos": "1", "fs.protected_regular": "2", "a.b": "0"})
    assert system.sysctls(["fs.protected_*", "no.such"]) == {
        "fs.protected_fifos": "1",
        "fs.protected_regular": "2",
    }


def test_is_a_system_like() -> None:
    system: SystemLike = FakeSystem(pseudo_mounts=["/proc"])
    assert system.pseudo_mounts() == ["/proc"]
