"""Process information and signalling against the real kernel, on children this test starts."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from yoroi.errors import ActionRefused, ProcessGone
from yoroi.platform.linux.process import Processes, container_id

root = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="signalling tests run as root"),
]
Start = Callable[..., subprocess.Popen[bytes]]
FAMILY = "sh -c 'sleep 30 & sleep 30 & wait' & sleep 30 & wait"  # 2 children, 2 grandchildren


def state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat, as ps shows it; None once the pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return raw[raw.rfind(")") + 2]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def start() -> Iterator[Start]:
    """Start children; at the end kill (by pid) them and everything under them, and reap."""
    started: list[subprocess.Popen[bytes]] = []

    def run(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        try:
            family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(True))]
        except psutil.NoSuchProcess:
            family = [proc.pid]
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


def family_of(shell: subprocess.Popen[bytes], size: int) -> list[int]:
    """The shell's descendants once ``size`` of them run (seen through psutil, not us)."""
    found: list[int] = []

    def grown() -> bool:
        found[:] = [c.pid for c in psutil.Process(shell.pid).children(recursive=True)]
        return len(found) >= size and all(state(p) == "S" for p in found)

    wait_for(grown, f"{size} descendants of the test shell")
    return found


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ("/docker/" + "a" * 64, "a" * 64),
        ("/system.slice/docker-" + "b" * 64 + ".scope", "b" * 64),
        ("/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + "c" * 64 + ".scope", "c" * 64),
        ("/kubepods/besteffort/pod0f1e/" + "d" * 64, "d" * 64),
        ("/machine.slice/crio-" + "e" * 64 + ".scope", "e" * 64),
        ("/machine.slice/libpod-" + "f" * 64 + ".scope/container", "f" * 64),
        ("/machine.slice/libpod-conmon-" + "f" * 64 + ".scope", None),
        ("/lxc.payload.web1/init.scope", "web1"),
        ("/lxc/mail", "mail"),
        ("/user.slice/user-1000.slice/session-3.scope", None),
        ("/", None),
        (None, None),
    ],
)
def test_container_id_from_cgroup_path(cgroup: str | None, expected: str | None) -> None:
    assert container_id(cgroup) == expected


@pytest.mark.parametrize("pid", [1, os.getpid(), os.getppid(), 0, -1])
def test_refuses_init_ourselves_and_our_ancestors(pid: int) -> None:
    with pytest.raises(ActionRefused, match=f"pid {pid}"):
        Processes().signal(pid, 0)


def test_refuses_to_freeze_or_kill_our_own_family() -> None:
    # in a child python, so that a broken guard stops or kills only that child and its shell
    code = (
        "import os\n"
        "from yoroi.errors import ActionRefused\n"
        "from yoroi.platform.linux.process import Processes\n"
        "for act, pid in [('stop_tree', os.getpid()), ('kill_tree', os.getppid()),\n"
        "                 ('continue_tree', 1)]:\n"
        "    try:\n        getattr(Processes(), act)(pid)\n"
        "    except ActionRefused as e:\n        print(e)\n"
    )
    out = subprocess.run(
        ["/bin/sh", "-c", '"$0" -c "$1"; echo shell-alive', sys.executable, code],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "shell-alive", out.stdout + out.stderr
    assert all("refusing to signal pid" in line for line in lines[:3])


def test_missing_pid_is_process_gone() -> None:
    absent = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    procs = Processes()
    for call in (procs.read, procs.children, procs.descendants, procs.stop_tree):
        with pytest.raises(ProcessGone, match=str(absent)):
            call(absent)


class TestRealProcesses:
    pytestmark = root

    def test_reads_a_child(self, start: Start) -> None:
        child = start("/bin/sleep", "30")
        info = Processes().read(child.pid)
        assert (info.pid, info.ppid, info.comm) == (child.pid, os.getpid(), "sleep")
        assert info.exe is not None and os.path.samefile(info.exe, "/bin/sleep")
        assert not info.exe_deleted
        assert info.cmdline == ("/bin/sleep", "30")
        assert (info.uid, info.euid, info.gid) == (os.getuid(), os.geteuid(), os.getgid())
        assert info.user == pwd.getpwuid(os.getuid()).pw_name
        assert abs(info.start_time - time.time()) < 5
        raw_loginuid = int(Path("/proc/self/loginuid").read_text())
        assert info.loginuid == (None if raw_loginuid == 4294967295 else raw_loginuid)
        unified = [
            ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln[:3] == "0::"
        ]
        assert info.cgroup == (unified[0][3:] if unified else info.cgroup)
        assert info.state == psutil.STATUS_SLEEPING or info.state == psutil.STATUS_RUNNING

    def test_parent_chain_goes_up_to_init(self, start: Start) -> None:
        chain = Processes().parent_chain(start("/bin/sleep", "30").pid)
        assert chain[0].pid == os.getpid()
        assert chain[-1].pid == 1
        assert [c.ppid for c in chain[:-1]] == [c.pid for c in chain[1:]]

    def test_family_walks(self, start: Start) -> None:
        shell = start("/bin/sh", "-c", FAMILY)
        family = family_of(shell, 4)
        procs = Processes()
        assert sorted(procs.descendants(shell.pid)) == sorted(family)
        kids = procs.children(shell.pid)
        assert len(kids) == 2 and set(kids) < set(family)
        assert {shell.pid, *family} <= set(procs.pids())

    def test_stop_continue_and_kill_a_family(self, start: Start) -> None:
        shell = start("/bin/sh", "-c", FAMILY)
        family = [shell.pid, *family_of(shell, 4)]
        procs = Processes()

        assert sorted(procs.stop_tree(shell.pid)) == sorted(family)
        assert [state(p) for p in family] == ["T"] * 5

        assert sorted(procs.continue_tree(shell.pid)) == sorted(family)
        wait_for(lambda: "T" not in [state(p) for p in family], "the family to resume")

        assert sorted(procs.kill_tree(shell.pid)) == sorted(family)
        assert shell.wait(timeout=5) == -signal.SIGKILL
        wait_for(lambda: {state(p) for p in family} <= {None, "Z"}, "the family to die")

    def test_a_family_that_keeps_forking_cannot_escape(self, start: Start) -> None:
        forker = "i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i+1)); done; wait"
        shell = start("/bin/sh", "-c", forker)
        wait_for(lambda: len(psutil.Process(shell.pid).children()) > 20, "the forking")
        procs = Processes()
        stopped = set(procs.stop_tree(shell.pid))
        now = {c.pid for c in psutil.Process(shell.pid).children(recursive=True)}
        assert now | {shell.pid} <= stopped
        assert len(now) > 20 and {state(p) for p in now} <= {"T", "Z"}
        assert set(procs.kill_tree(shell.pid)) >= now
        assert shell.wait(timeout=10) == -signal.SIGKILL

    def test_deleted_executable_is_flagged(self, start: Start, tmp_path: Path) -> None:
        copy = tmp_path / "yoroi-sleep"
        shutil.copy2("/bin/sleep", copy)
        child = start(str(copy), "30")
        before = Processes().read(child.pid)
        assert (before.exe, before.exe_deleted) == (str(copy), False)
        copy.unlink()
        after = Processes().read(child.pid)
        assert (after.exe, after.exe_deleted) == (str(copy), True)

    def test_signal_goes_to_the_process(self, start: Start) -> None:
        child = start("/bin/sleep", "30")
        Processes().signal(child.pid, signal.SIGTERM)
        assert child.wait(timeout=5) == -signal.SIGTERM
        with pytest.raises(ProcessGone):
            Processes().signal(child.pid, signal.SIGTERM)
