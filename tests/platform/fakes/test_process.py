"""The fake process table keeps the real adapter's tree semantics and safety rules."""

from __future__ import annotations

from signal import SIGCONT, SIGKILL, SIGSTOP, SIGTERM

import psutil
import pytest

from yoroi.errors import ActionRefused, ProcessGone
from yoroi.platform.fakes.process import FakeProcesses
from yoroi.platform.linux.process import ProcessesLike


@pytest.fixture
def procs() -> FakeProcesses:
    """sshd(10) -> bash(20) -> {sh(30) -> {miner(40), miner(41)}, vim(31)}; agent(50) -> 51."""
    fake = FakeProcesses(self_pid=51)
    fake.add(10, comm="sshd")
    fake.add(20, ppid=10, comm="bash", loginuid=1000, login_user="alice")
    fake.add(30, ppid=20, comm="sh")
    fake.add(31, ppid=20, comm="vim")
    fake.add(40, ppid=30, comm="miner")
    fake.add(41, ppid=30, comm="miner")
    fake.add(50, comm="yoroi-agent")
    fake.add(51, ppid=50, comm="python")
    return fake


def test_is_a_processes_like(procs: FakeProcesses) -> None:
    used: ProcessesLike = procs
    assert used.read(20).login_user == "alice"


def test_family_walks(procs: FakeProcesses) -> None:
    assert procs.children(20) == [30, 31]
    assert procs.descendants(20) == [30, 31, 40, 41]
    assert [p.pid for p in procs.parent_chain(40)] == [30, 20, 10, 1]
    assert procs.pids() == [1, 10, 20, 30, 31, 40, 41, 50, 51]


def test_missing_root_is_process_gone_for_every_call(procs: FakeProcesses) -> None:
    for call in (procs.read, procs.children, procs.descendants, procs.parent_chain):
        with pytest.raises(ProcessGone, match="999"):
            call(999)
    for tree in (procs.stop_tree, procs.kill_tree, procs.continue_tree):
        with pytest.raises(ProcessGone, match="999"):
            tree(999)
    with pytest.raises(ProcessGone):
        procs.signal(999, SIGTERM)
    assert procs.signals == []


def test_stop_tree_stops_top_down_and_continue_resumes_children_first(
    procs: FakeProcesses,
) -> None:
    assert procs.stop_tree(30) == [30, 40, 41]
    assert procs.signals == [(30, SIGSTOP), (40, SIGSTOP), (41, SIGSTOP)]
    assert {procs.read(p).state for p in (30, 40, 41)} == {psutil.STATUS_STOPPED}
    assert procs.read(20).state == psutil.STATUS_RUNNING

    assert procs.continue_tree(30) == [41, 40, 30]
    assert procs.signals[3:] == [(41, SIGCONT), (40, SIGCONT), (30, SIGCONT)]
    assert {procs.read(p).state for p in (30, 40, 41)} == {psutil.STATUS_RUNNING}


def test_kill_tree_freezes_then_kills_deepest_first(procs: FakeProcesses) -> None:
    assert procs.kill_tree(20) == [41, 40, 31, 30, 20]
    stops = [(p, SIGSTOP) for p in (20, 30, 31, 40, 41)]
    assert procs.signals == stops + [(p, SIGKILL) for p in (41, 40, 31, 30, 20)]
    assert procs.pids() == [1, 10, 50, 51]


def test_a_child_forked_during_the_freeze_is_caught(procs: FakeProcesses) -> None:
    def fork_behind_our_back(pid: int, sig: int) -> None:
        if (pid, sig) == (30, SIGSTOP):
            procs.add(42, ppid=41, comm="miner")  # 41 is not stopped yet: it can still fork

    procs.on_signal = fork_behind_our_back
    assert procs.stop_tree(30) == [30, 40, 41, 42]
    assert procs.read(42).state == psutil.STATUS_STOPPED


def test_a_member_that_exits_meanwhile_is_skipped(procs: FakeProcesses) -> None:
    procs.on_signal = lambda pid, sig: procs.exit(40) if (pid, sig) == (30, SIGSTOP) else None
    assert procs.kill_tree(30) == [41, 30]


def test_exit_reparents_children_to_init(procs: FakeProcesses) -> None:
    procs.exit(30)
    assert procs.read(40).ppid == 1
    assert procs.descendants(20) == [31]
    assert 40 in procs.children(1)


@pytest.mark.parametrize("pid", [1, 51, 50, 0, -1])
def test_refuses_init_the_caller_and_its_ancestors(procs: FakeProcesses, pid: int) -> None:
    for act in (procs.stop_tree, procs.kill_tree, procs.continue_tree):
        with pytest.raises(ActionRefused, match=f"pid {pid}"):
            act(pid)
    with pytest.raises(ActionRefused, match=f"pid {pid}"):
        procs.signal(pid, SIGTERM)
    assert procs.signals == []


def test_other_signals_are_recorded_only(procs: FakeProcesses) -> None:
    procs.signal(31, SIGTERM)
    assert procs.signals == [(31, SIGTERM)]
    assert procs.read(31).state == psutil.STATUS_RUNNING


def test_add_derives_the_container_from_the_cgroup() -> None:
    fake = FakeProcesses()
    info = fake.add(7, comm="nginx", cgroup="/system.slice/docker-" + "a" * 64 + ".scope")
    assert info.container_id == "a" * 64
    assert fake.add(8, exe="/tmp/x", exe_deleted=True).exe_deleted
