from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from yoroi.modules.appcontrol.enforcer import Enforcer
from yoroi.modules.appcontrol.loaders import Execution, LoadKind
from yoroi.modules.appcontrol.memfd import MemfdGuard, is_memfd_path, memfd_decision
from yoroi.modules.appcontrol.types import Decision, FileIdentity, Mode, Reason
from yoroi.platform.fakes.fanotify import FakeFanotify
from yoroi.platform.fakes.sysctl import FakeSysctl
from yoroi.platform.linux.fanotify import FanClass, FanMask, FanotifyLike


def test_memfd_paths() -> None:
    assert is_memfd_path("/memfd:payload (deleted)")
    assert not is_memfd_path("/srv/memfd:x") and not is_memfd_path(None)
    decision = memfd_decision("/memfd:x (deleted)")
    assert not decision.allow and decision.reason is Reason.MEMFD


def test_guard_raises_and_restores_in_enforce_mode() -> None:
    sysctl = FakeSysctl({"vm.memfd_noexec": "1"})
    guard = MemfdGuard(sysctl, Mode.ENFORCE)
    guard.start()
    assert guard.active and sysctl.values["vm.memfd_noexec"] == "2"
    guard.stop()
    assert not guard.active and sysctl.values["vm.memfd_noexec"] == "1"


def test_guard_leaves_audit_mode_and_old_kernels_alone() -> None:
    sysctl = FakeSysctl({"vm.memfd_noexec": "0"})
    MemfdGuard(sysctl, Mode.AUDIT).start()
    assert sysctl.writes == []
    old = MemfdGuard(FakeSysctl({}), Mode.ENFORCE)
    old.start()
    assert not old.active and old.problem and "vm.memfd_noexec" in old.problem
    refused = MemfdGuard(FakeSysctl({"vm.memfd_noexec": "0"}, read_only=True), Mode.ENFORCE)
    refused.start()
    assert refused.problem and "root" in refused.problem


class NoJudge:
    def judge(self, path: str, fd: int, identity: FileIdentity, mode_bits: int) -> Decision:
        raise AssertionError("a memfd is never looked up")


@pytest.mark.parametrize(("mode", "allowed"), [(Mode.ENFORCE, False), (Mode.AUDIT, True)])
def test_exec_event_from_a_memfd(mode: Mode, allowed: bool) -> None:
    fan = FakeFanotify(FanClass.CONTENT)
    reports: list[tuple[Decision, Execution]] = []

    def factory(timeout: float, on_deadman: object) -> FanotifyLike:
        return fan

    sysctl = FakeSysctl({"vm.memfd_noexec": "0"})
    enforcer = Enforcer(
        NoJudge(), mode, ["/"], on_decision=lambda d, e: reports.append((d, e)),
        fanotify=factory, sysctl=sysctl,
    )  # fmt: skip
    with enforcer:
        fan.inject(FanMask.OPEN_EXEC_PERM, "/memfd:payload (deleted)", pid=2**22 + 1)
        deadline = time.monotonic() + 5
        while not reports and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sysctl.values["vm.memfd_noexec"] == ("2" if mode is Mode.ENFORCE else "0")
    assert [r.allow for r in fan.responses] == [allowed]
    decision, execution = reports[0]
    assert decision.reason is Reason.MEMFD and decision.allow is allowed
    assert execution.kind is LoadKind.MEMFD
    assert sysctl.values["vm.memfd_noexec"] == "0"  # restored on stop


RUN_FROM_MEMFD = textwrap.dedent(
    """
    import os, sys
    fd = os.memfd_create("payload", 0)
    with open("/bin/true", "rb") as src:
        os.write(fd, src.read())
    try:
        os.execv(f"/proc/self/fd/{fd}", ["payload"])
    except PermissionError:
        sys.exit(3)
    """
)
ENFORCER_IN_PIDNS = textwrap.dedent(
    """
    import subprocess, sys
    from yoroi.modules.appcontrol.enforcer import Enforcer
    from yoroi.modules.appcontrol.types import Decision, Reason

    class Anything:
        def judge(self, path, fd, identity, mode_bits):
            return Decision(True, Reason.TRUSTED, path)

    with Enforcer(Anything(), sys.argv[1], [sys.argv[2]]):
        child = subprocess.run([sys.executable, "-c", sys.argv[3]], timeout=10)
    print(child.returncode)
    """
)


@pytest.mark.root
@pytest.mark.parametrize(("mode", "status"), [(Mode.ENFORCE, "3"), (Mode.AUDIT, "0")])
def test_memfd_execution_is_refused_by_the_kernel_in_enforce_mode(
    tmpfs_mount: Path, mode: Mode, status: str
) -> None:
    """In a private pid namespace: vm.memfd_noexec is per namespace, the host's stays as is."""
    if not os.path.exists("/proc/sys/vm/memfd_noexec") or not shutil.which("unshare"):
        pytest.skip("needs vm.memfd_noexec (kernel >= 6.3) and unshare")
    host = Path("/proc/sys/vm/memfd_noexec").read_text()
    root = Path(__file__).resolve().parents[3]
    argv = [sys.executable, "-c", ENFORCER_IN_PIDNS, mode, str(tmpfs_mount), RUN_FROM_MEMFD]
    done = subprocess.run(
        ["unshare", "--pid", "--fork", *argv], cwd=root, capture_output=True, text=True,
        timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.split() == [status]
    assert Path("/proc/sys/vm/memfd_noexec").read_text() == host
