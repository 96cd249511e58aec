import os
import subprocess
import sys

import pytest

from yoroi.errors import PermissionDenied, PlatformError, Unsupported
from yoroi.platform.fakes.sysctl import FakeSysctl
from yoroi.platform.linux.sysctl import Sysctl, sysctl_path


def test_names_map_to_proc_sys() -> None:
    assert sysctl_path("vm.memfd_noexec") == "/proc/sys/vm/memfd_noexec"
    assert sysctl_path("net.ipv4.ip_forward", "/x") == "/x/net/ipv4/ip_forward"


@pytest.mark.parametrize("bad", ["vm", "../etc/passwd", "vm..x", "vm/memfd_noexec", ""])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a sysctl name"):
        sysctl_path(bad)


def test_reads_a_real_tunable() -> None:
    assert Sysctl().read("kernel.ostype") == "Linux"


def test_missing_tunable_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="vm.no_such_tunable"):
        Sysctl().read("vm.no_such_tunable")


def test_a_file_tree_stands_in_for_proc_sys(tmp_path: object) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "vm"))
    with open(os.path.join(root, "vm", "x"), "w") as handle:
        handle.write("0\n")
    sysctl = Sysctl(root)
    sysctl.write("vm.x", "2")
    assert sysctl.read("vm.x") == "2"


@pytest.mark.root
def test_write_in_a_private_pid_namespace() -> None:
    """vm.memfd_noexec is per pid namespace: write it in a fresh one, never the host's."""
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare --pid)")
    if not os.path.exists("/proc/sys/vm/memfd_noexec"):
        pytest.skip("kernel < 6.3: no vm.memfd_noexec")
    code = (
        "from yoroi.platform.linux.sysctl import Sysctl\n"
        "s = Sysctl(); s.write('vm.memfd_noexec', '2'); print(s.read('vm.memfd_noexec'))\n"
        "try:\n    s.write('vm.memfd_noexec', '9')\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
    )
    host = Sysctl().read("vm.memfd_noexec")
    done = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["2", "PlatformError"]
    assert Sysctl().read("vm.memfd_noexec") == host


def test_fake_twin_records_writes_and_refuses_like_the_kernel() -> None:
    sysctl = FakeSysctl({"vm.memfd_noexec": "0"})
    sysctl.write("vm.memfd_noexec", "2")
    assert sysctl.read("vm.memfd_noexec") == "2"
    assert sysctl.writes == [("vm.memfd_noexec", "2")]
    with pytest.raises(Unsupported):
        sysctl.read("vm.other")
    with pytest.raises(PermissionDenied):
        FakeSysctl({"vm.x": "0"}, read_only=True).write("vm.x", "1")
    assert issubclass(PermissionDenied, PlatformError)
