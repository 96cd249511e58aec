"""Who-data on fake process tables: actors, parent chains, package transactions."""

from __future__ import annotations

import time

import pytest

from yoroi.modules.integrity.whodata import TransactionHold, WhoResolver, owned_name
from yoroi.platform.fakes.dpkg import FakeDpkgDatabase
from yoroi.platform.fakes.proc_connector import FakeProcConnector
from yoroi.platform.fakes.process import FakeProcesses
from yoroi.platform.linux.proc_connector import ExecEvent, ExitEvent, ForkEvent

APT = ("apt-get", "install", "-y", "nginx")


def _no_proc(pid: int) -> None:
    return None  # fake pids must never be looked up in the real /proc


@pytest.fixture
def procs() -> FakeProcesses:
    table = FakeProcesses()
    table.add(100, comm="sshd", exe="/usr/sbin/sshd", loginuid=1000, login_user="alice")
    table.add(200, ppid=100, comm="bash", exe="/usr/bin/bash", loginuid=1000,
              login_user="alice", cmdline=("-bash",))
    table.add(300, ppid=200, comm="apt-get", exe="/usr/bin/apt-get", cmdline=APT,
              loginuid=1000, login_user="alice")
    table.add(400, ppid=300, comm="dpkg", exe="/usr/bin/dpkg",
              cmdline=("/usr/bin/dpkg", "--status-fd", "23", "--unpack", "nginx.deb"))
    table.add(500, ppid=400, comm="sh", exe="/usr/bin/dash",
              cmdline=("/bin/sh", "/var/lib/dpkg/info/nginx.postinst", "configure"))
    table.add(600, ppid=200, comm="vim", exe="/usr/bin/vim.basic", uid=1000, user="alice",
              cmdline=("vim", "/etc/nginx/nginx.conf"), loginuid=1000, login_user="alice")
    return table


def _resolver(procs: FakeProcesses, **kw: object) -> WhoResolver:
    def image(pid: int) -> tuple[str, tuple[str, ...], int] | None:
        info = procs.table.get(pid)  # the fake table stands in for /proc/PID/{exe,cmdline}
        return (info.exe or "", info.cmdline, info.uid) if info is not None else None

    return WhoResolver(procs, exe_probe=_no_proc, image_probe=image, **kw)  # type: ignore[arg-type]


def test_an_actor_carries_process_user_login_user_and_parent_chain(procs: FakeProcesses) -> None:
    actor = _resolver(procs).resolve(600)
    assert actor.source == "live" and actor.transaction is None
    assert actor.process.exe == "/usr/bin/vim.basic"
    assert actor.process.cmdline == ("vim", "/etc/nginx/nginx.conf")
    assert (actor.process.user, actor.process.login_user) == ("alice", "alice")
    assert [p.pid for p in actor.chain] == [200, 100, 1]
    assert actor.as_dict()["chain"][0]["exe"] == "/usr/bin/bash"


def test_a_maintainer_script_under_apt_and_dpkg_is_a_transaction(procs: FakeProcesses) -> None:
    actor = _resolver(procs).resolve(500)
    assert actor.transaction is not None
    assert actor.transaction.dpkg_pid == 400 and actor.transaction.command == APT
    assert actor.transaction.manager == "apt-get" and actor.transaction.key == 400
    assert tuple(actor.as_dict()["transaction"]["command"]) == APT


def test_unattended_upgrade_is_recognised_through_its_interpreter(procs: FakeProcesses) -> None:
    procs.add(700, comm="unattended-upgr", exe="/usr/bin/python3.11",
              cmdline=("/usr/bin/python3", "/usr/bin/unattended-upgrade", "--dry-run"))
    procs.add(701, ppid=700, comm="dpkg", exe="/usr/bin/dpkg", cmdline=("dpkg", "--configure"))
    transaction = _resolver(procs).resolve(701).transaction
    assert transaction is not None and transaction.manager == "unattended-upgrade"
    assert transaction.command[1] == "/usr/bin/unattended-upgrade"
    assert transaction.dpkg_pid == 701


def test_a_process_that_exited_is_still_known_from_the_connector_fed_cache(
    procs: FakeProcesses,
) -> None:
    connector = FakeProcConnector()
    who = _resolver(procs, connector=connector)
    who.open()
    try:
        now = time.monotonic_ns()
        connector.inject(ForkEvent(now, 0, 800, 800, 200, 200))
        procs.add(800, ppid=200, comm="cp", exe="/usr/bin/cp", cmdline=("cp", "x", "/etc/y"))
        connector.inject(ExecEvent(now, 0, 800, 800))
        assert who.pump() == 2
        procs.exit(800)
        connector.inject(ExitEvent(now, 0, 800, 800, 0, 17, 200, 200))
        who.pump()
        actor = who.resolve(800)
        assert actor.source == "cache" and actor.process.exe == "/usr/bin/cp"
        assert actor.process.cmdline == ("cp", "x", "/etc/y") and actor.process.user == "root"
        assert [p.pid for p in actor.chain] == [200, 100, 1]
        assert who.resolve(999).source == "gone"
    finally:
        who.close()


def test_an_exec_replaces_the_cached_image(procs: FakeProcesses) -> None:
    who = _resolver(procs, connector=FakeProcConnector())
    assert who.resolve(600).process.exe == "/usr/bin/vim.basic"
    procs.add(600, ppid=200, comm="nano", exe="/usr/bin/nano", cmdline=("nano",))
    assert who.resolve(600).process.exe == "/usr/bin/vim.basic"  # nothing told it yet
    who.feed([ExecEvent(time.monotonic_ns(), 0, 600, 600)])
    assert who.resolve(600).process.exe == "/usr/bin/nano"


def test_exited_entries_expire_after_the_grace_period(procs: FakeProcesses) -> None:
    clock = [0.0]
    who = _resolver(procs, connector=FakeProcConnector(), grace=5.0, clock=lambda: clock[0])
    who.resolve(600)
    procs.exit(600)
    who.feed([ExitEvent(0, 0, 600, 600, 0, 17, 200, 200)])
    assert who.resolve(600).source == "cache"
    clock[0] = 10.0
    who.feed([])
    assert who.resolve(600).source == "gone"


def _hold(procs: FakeProcesses, db: FakeDpkgDatabase) -> TransactionHold[str]:
    return TransactionHold(_resolver(procs).alive, lambda: db)


def test_package_changes_are_held_until_dpkg_exits_then_owned_ones_are_expected(
    procs: FakeProcesses,
) -> None:
    db = FakeDpkgDatabase.from_contents({"nginx-common": {"/etc/nginx/nginx.conf": b"x"}})
    transaction = _resolver(procs).resolve(500).transaction
    assert transaction is not None
    hold = _hold(procs, db)
    hold.hold(transaction, "conf", ["/etc/nginx/nginx.conf.dpkg-new", "/etc/nginx/nginx.conf"])
    hold.hold(transaction, "passwd", ["/etc/passwd"])
    assert hold.release() == [] and len(hold) == 2  # dpkg still runs
    procs.exit(500)
    procs.exit(400)
    settled = {s.item: s for s in hold.release()}
    assert settled["conf"].expected and settled["conf"].owners == ("nginx-common",)
    assert not settled["passwd"].expected and settled["passwd"].owners == ()
    assert len(hold) == 0


def test_a_file_removed_with_its_package_is_expected_from_the_earlier_database(
    procs: FakeProcesses,
) -> None:
    before = FakeDpkgDatabase.from_contents({"nginx": {"/usr/sbin/nginx": b"elf"}})
    after = FakeDpkgDatabase.from_contents({})
    databases = iter([before, after])
    transaction = _resolver(procs).resolve(400).transaction
    assert transaction is not None
    hold: TransactionHold[str] = TransactionHold(lambda pid: False, lambda: next(databases))
    hold.hold(transaction, "rm", ["/usr/sbin/nginx"])
    (settled,) = hold.release()
    assert settled.expected and settled.owners == ("nginx",)


def test_the_hold_is_bounded_in_size_and_age(procs: FakeProcesses) -> None:
    clock = [0.0]
    db = FakeDpkgDatabase.from_contents({})
    transaction = _resolver(procs).resolve(500).transaction
    assert transaction is not None
    hold: TransactionHold[int] = TransactionHold(lambda pid: True, lambda: db, max_items=3,
                                                 max_age=60, clock=lambda: clock[0])
    for n in range(4):
        hold.hold(transaction, n, ["/x"])
    assert [s.item for s in hold.release()] == [0, 1, 2, 3]  # over max_items: all of the oldest
    for n in range(2):
        hold.hold(transaction, n, ["/x"])
    assert hold.release() == []
    clock[0] = 61.0
    assert [s.item for s in hold.release()] == [0, 1]


def test_dpkg_temporary_names_map_to_the_owned_path() -> None:
    assert owned_name("/etc/a.conf.dpkg-new") == "/etc/a.conf"
    assert owned_name("/usr/bin/x.dpkg-tmp") == "/usr/bin/x"
    assert owned_name("/etc/a.conf") == "/etc/a.conf"
