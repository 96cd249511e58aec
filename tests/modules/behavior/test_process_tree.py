"""The process tree: families, boundaries, tombstones and exec updates, on fakes and the kernel."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import PlatformError
from yoroi.modules.behavior.process_tree import ProcessTree
from yoroi.modules.behavior.programs import (
    Invocation,
    invocation,
    parse_invocation,
    program_names,
)
from yoroi.modules.behavior.tells import Tell, TellRules, check_exec
from yoroi.platform.fakes.proc_connector import FakeProcConnector
from yoroi.platform.fakes.process import FakeProcesses
from yoroi.platform.linux.proc_connector import (
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
)
from yoroi.platform.linux.process import Processes, ProcessInfo

AGENT = 10
TTY = "/dev/pts/3"


class World:
    """A fake machine: processes in FakeProcesses, their events through a FakeProcConnector."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.procs = FakeProcesses(self_pid=AGENT)
        self.fds: dict[tuple[int, int], str] = {}
        self.conn = FakeProcConnector()
        self.conn.open()
        self.procs.add(AGENT, ppid=1, comm="yoroi", cmdline=("/usr/bin/python3", "-m", "yoroi"))
        self.tree = ProcessTree(
            self.procs, agent_pid=AGENT, grace=30.0, clock=lambda: self.now,
            fd_reader=lambda pid, fd: self.fds.get((pid, fd)),
        )  # fmt: skip

    def add(self, pid: int, ppid: int, exe: str, *argv: str, **fields: Any) -> int:
        """A process that exists before the snapshot."""
        comm = fields.pop("comm", os.path.basename(exe)[:15])
        self.procs.add(pid, ppid=ppid, comm=comm, exe=exe, cmdline=argv or (exe,), **fields)
        return pid

    def fork(self, parent: int, child: int) -> int:
        info = self.procs.read(parent)
        self.procs.table[child] = dataclasses.replace(
            info, pid=child, ppid=parent, start_time=time.time()
        )
        self.fds.update({(child, fd): link for (p, fd), link in self.fds.items() if p == parent})
        self._emit(ForkEvent(time.monotonic_ns(), 0, child, child, parent, parent))
        return child

    def exec(self, pid: int, exe: str, *argv: str, pump: bool = True) -> None:
        info = self.procs.read(pid)
        self.procs.table[pid] = dataclasses.replace(
            info, exe=exe, cmdline=argv or (exe,), comm=os.path.basename(exe)[:15]
        )
        self._emit(ExecEvent(time.monotonic_ns(), 0, pid, pid), pump)

    def exit(self, pid: int, pump: bool = True) -> None:
        ppid = self.procs.read(pid).ppid
        self.procs.exit(pid)
        self._emit(ExitEvent(time.monotonic_ns(), 0, pid, pid, 0, 17, ppid, ppid), pump)

    def _emit(self, event: Any, pump: bool = True) -> None:
        self.conn.inject(event)
        if pump:
            self.pump()

    def pump(self) -> None:
        for event in self.conn.read():
            self.tree.apply(event)

    def session(self) -> int:
        """sshd (50) -> login bash (100, on a terminal): the usual administrator's session."""
        self.add(50, 1, "/usr/sbin/sshd", "sshd: /usr/sbin/sshd -D")
        self.add(100, 50, "/usr/bin/bash", "-bash")
        self.fds[(100, 0)] = TTY
        return 100


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.conn.close()


def snap(world: World) -> ProcessTree:
    world.tree.snapshot()
    return world.tree


# -- snapshot and reading ---------------------------------------------------------------------


def test_snapshot_builds_the_tree(world: World) -> None:
    bash = world.session()
    world.add(200, bash, "/usr/bin/vim", "vim", "notes.txt", uid=1000, user="ann")
    tree = snap(world)
    node = tree.node(200)
    assert node is not None and node.info.exe == "/usr/bin/vim" and node.alive
    assert [p.pid for p in tree.parent_chain(200)] == [100, 50, 1]
    assert tree.children(bash) == [200]
    assert len(tree) == 5  # init, agent, sshd, bash, vim


def test_unknown_pid_is_none_and_its_own_family(world: World) -> None:
    tree = snap(world)
    assert tree.node(4242) is None
    assert tree.chain_below_boundary(4242) == [4242]
    assert tree.describe(4242) == {"pid": 4242}


def test_describe_names_process_user_parents_and_container(world: World) -> None:
    bash = world.session()
    cgroup = "/system.slice/docker-" + "ab" * 32 + ".scope"
    world.add(200, bash, "/usr/bin/python3.11", "python3", "enc.py", "/srv",
              user="ann", uid=1000, cgroup=cgroup)  # fmt: skip
    described = snap(world).describe(200)
    assert described["exe"] == "/usr/bin/python3.11"
    assert described["cmd_line"] == "python3 enc.py /srv"
    assert described["cmdline"] == ["python3", "enc.py", "/srv"]
    assert described["user"] == "ann"
    assert described["container_id"] == "ab" * 32
    assert described["family"] == 200
    parents = described["parents"]
    assert isinstance(parents, list)
    assert [p["pid"] for p in parents] == [100, 50, 1]
    assert parents[0]["cmd_line"] == "-bash"


# -- boundaries ---------------------------------------------------------------------------


def test_init_kthreadd_agent_and_its_ancestors_are_boundaries(world: World) -> None:
    world.add(2, 0, "", "")
    world.add(5, 1, "/usr/bin/python3.11", "python3", "supervisor_of_agent.py")
    world.procs.table[AGENT] = dataclasses.replace(world.procs.table[AGENT], ppid=5)
    world.add(11, AGENT, "/usr/bin/python3.11", "python3", "-c", "pass")
    tree = snap(world)
    assert all(tree.is_boundary(p) for p in (1, 2, AGENT, 5))
    assert tree.chain_below_boundary(11) == [11]


@pytest.mark.parametrize(
    ("argv", "stdin", "boundary"),
    [
        (("-bash",), TTY, True),  # login shell
        (("-bash",), "pipe:[7]", True),  # a login shell counts whatever its stdin
        (("bash",), TTY, True),  # typed `bash` on a terminal
        (("bash",), None, True),  # stdin unreadable: benefit of the doubt
        (("bash",), "pipe:[7]", False),  # `curl ... | bash`: commands from a pipe
        (("bash", "-i"), "socket:[9]", False),  # a reverse shell forcing -i is not a session
        (("bash", "-c", "for f in *; do x; done"), TTY, False),  # inline script
        (("-bash", "-c", "cmd"), TTY, False),  # su - user -c cmd
        (("bash", "encrypt.sh"), TTY, False),  # a script
        (("sh", "-s", "--", "-y"), TTY, True),  # commands from a terminal, with arguments
    ],
)
def test_interactive_shells_are_boundaries(
    world: World, argv: tuple[str, ...], stdin: str | None, boundary: bool
) -> None:
    world.session()
    world.add(300, 50, "/usr/bin/bash", *argv)
    if stdin is not None:
        world.fds[(300, 0)] = stdin
    assert snap(world).is_boundary(300) is boundary


def test_busybox_sh_on_a_terminal_is_a_boundary(world: World) -> None:
    world.add(300, 1, "/bin/busybox", "sh")
    world.fds[(300, 0)] = TTY
    world.add(301, 1, "/bin/busybox", "sh", "/etc/init.d/rcS")
    tree = snap(world)
    assert tree.is_boundary(300) and not tree.is_boundary(301)


@pytest.mark.parametrize(
    ("exe", "argv"),
    [
        ("/usr/sbin/sshd", ("sshd: ann [priv]",)),
        ("/usr/lib/openssh/sshd-session", ("sshd-session: ann",)),
        ("/usr/bin/sudo", ("sudo", "make")),
        ("/usr/bin/su", ("su", "-")),
        ("/usr/sbin/cron", ("/usr/sbin/cron", "-f")),
        ("/usr/bin/tmux", ("tmux",)),
        ("/usr/bin/containerd-shim-runc-v2", ("containerd-shim-runc-v2", "-id", "x")),
        ("/usr/bin/python3.11", ("/usr/bin/python3", "/usr/bin/supervisord", "-n")),
        ("/usr/lib/systemd/systemd", ("/lib/systemd/systemd", "--user")),
    ],
)
def test_session_and_service_managers_are_boundaries(
    world: World, exe: str, argv: tuple[str, ...]
) -> None:
    world.add(300, 1, exe, *argv)
    world.add(301, 300, "/usr/bin/make", "make")
    tree = snap(world)
    assert tree.is_boundary(300)
    assert tree.chain_below_boundary(301) == [301]


def test_policy_adds_boundaries(world: World) -> None:
    world.add(300, 1, "/opt/runner/bin/ci-runner", "ci-runner")
    world.add(301, 300, "/usr/bin/make", "make")
    world.tree = ProcessTree(
        world.procs, agent_pid=AGENT, boundaries=["ci-runner"], fd_reader=lambda p, f: None
    )
    assert snap(world).family_of(301) == 301


def test_a_manager_name_in_a_writable_place_is_no_boundary(world: World) -> None:
    bash = world.session()
    world.add(300, bash, "/tmp/.x/sshd", "sshd")
    world.add(301, 300, "/tmp/.x/sshd", "sshd")
    tree = snap(world)
    assert not tree.is_boundary(300)
    assert tree.family_of(301) == 300


def test_comm_cannot_make_a_boundary(world: World) -> None:
    bash = world.session()
    world.add(300, bash, "/srv/app/worker", "worker", comm="sshd")
    world.add(301, 300, "/srv/app/worker", "worker", comm="sshd")
    assert snap(world).family_of(301) == 300


# -- families ---------------------------------------------------------------------------------


def test_fork_per_file_ransomware_is_one_family(world: World) -> None:
    bash = world.session()
    world.add(200, bash, "/home/ann/locker", "./locker", "/srv")
    tree = snap(world)
    for child in range(201, 206):
        world.fork(200, child)
    assert tree.chain_below_boundary(203) == [203, 200]
    assert tree.family_of(203) == 200
    # one worker over the threshold: the whole forking program is the family
    assert tree.choose_family(203, lambda p: p == 203) == 200
    # no worker over it alone, the parent level (all workers together) is
    assert tree.choose_family(203, lambda p: p == 200) == 200


def test_shell_script_running_openssl_per_file_is_the_family(world: World) -> None:
    bash = world.session()
    world.add(300, bash, "/usr/bin/bash", "bash", "encrypt.sh")
    tree = snap(world)
    for child in (301, 302, 303):
        world.fork(300, child)
        world.exec(child, "/usr/bin/openssl", "openssl", "enc", "-in", f"f{child}")
    assert tree.chain_below_boundary(302) == [302, 300]
    assert tree.choose_family(302, lambda p: p == 300) == 300
    # one openssl over the threshold by itself is that openssl, not the script
    assert tree.choose_family(302, lambda p: True) == 302


def test_pytest_that_ran_a_simulator_is_not_in_its_family(world: World) -> None:
    bash = world.session()
    world.add(400, bash, "/usr/bin/python3.11", "python3", "-m", "pytest", "tests")
    tree = snap(world)
    world.fork(400, 401)
    world.exec(401, "/usr/bin/python3.11", "python3", "simulator.py", "--workers", "2")
    world.fork(401, 402)  # the simulator's forked worker
    # pytest's level accumulates the simulator's score too; it must not be chosen
    assert tree.chain_below_boundary(402) == [402, 401, 400]
    assert tree.choose_family(402, lambda p: True) == 401
    assert tree.choose_family(401, lambda p: p in (401, 400)) == 401


def test_subshell_of_an_interactive_shell_belongs_to_the_family(world: World) -> None:
    bash = world.session()
    tree = snap(world)
    world.fork(bash, 500)  # ( for f in *; do openssl ...; done ) in the login shell
    world.fork(500, 501)
    world.exec(501, "/usr/bin/openssl", "openssl", "enc")
    assert not tree.is_boundary(500)
    assert tree.chain_below_boundary(501) == [501, 500]
    assert tree.choose_family(501, lambda p: p == 500) == 500


def test_a_boundary_writing_itself_is_its_own_family(world: World) -> None:
    bash = world.session()
    tree = snap(world)
    assert tree.chain_below_boundary(bash) == [bash]
    assert tree.choose_family(bash, lambda p: False) == bash


# -- events: exec, exit, tombstones -----------------------------------------------------------


def test_exec_is_read_again_on_next_look_up(world: World) -> None:
    bash = world.session()
    tree = snap(world)
    world.fork(bash, 600)
    forked = tree.node(600)
    assert forked is not None and forked.info.cmdline == ("-bash",) and forked.ppid == bash
    world.exec(600, "/usr/bin/tar", "tar", "czf", "a.tgz", ".")
    node = tree.node(600)
    assert node is not None and node.info.exe == "/usr/bin/tar" and not node.stale
    assert node.info.cmdline == ("tar", "czf", "a.tgz", ".")


def test_an_exec_never_read_is_not_taken_for_a_fork_clone(world: World) -> None:
    bash = world.session()
    world.add(400, bash, "/usr/bin/python3.11", "python3", "-m", "pytest")
    tree = snap(world)
    world.fork(400, 401)
    world.exec(401, "/usr/bin/python3.11", "python3", "sim.py", pump=False)
    world.exit(401, pump=False)  # exits before anyone looked at it
    world.pump()
    node = tree.node(401)
    assert node is not None and not node.alive and not node.image_known
    assert tree.choose_family(401, lambda p: True) == 401  # not widened to pytest


def test_exit_leaves_a_tombstone_for_the_grace_period(world: World) -> None:
    bash = world.session()
    world.add(700, bash, "/usr/bin/python3.11", "python3", "locker.py")
    tree = snap(world)
    world.fork(700, 701)
    world.exit(701)
    node = tree.node(701)
    assert node is not None and not node.alive and node.exited_at == world.now
    assert tree.family_of(701) == 700  # a late file event is still attributed
    assert tree.describe(701)["exited"] is True
    world.now += 31
    tree.expire()
    assert tree.node(701) is None
    assert tree.children(700) == []


def test_orphans_keep_their_family_until_the_tombstone_goes(world: World) -> None:
    bash = world.session()
    world.add(700, bash, "/srv/x/dropper", "dropper")
    tree = snap(world)
    world.fork(700, 701)
    world.exec(701, "/srv/x/worker", "worker")
    world.exit(700)  # the kernel re-parents 701 to init (FakeProcesses does too)
    assert tree.family_of(701) == 700
    world.exec(701, "/srv/x/worker2", "worker2")  # a re-read must not lose the link
    assert tree.family_of(701) == 700
    world.now += 31
    tree.expire()
    node = tree.node(701)
    assert node is not None and node.ppid == 1
    assert tree.family_of(701) == 701


def test_a_reused_pid_is_a_new_process(world: World) -> None:
    bash = world.session()
    world.add(700, bash, "/srv/x/old", "old")
    tree = snap(world)
    world.fork(700, 701)
    world.exit(700)
    world.fork(bash, 700)  # the pid comes back: a new child of the shell
    node = tree.node(700)
    assert node is not None and node.alive
    assert tree.children(700) == []
    assert tree.family_of(701) == 701


def test_threads_are_ignored(world: World) -> None:
    bash = world.session()
    tree = snap(world)
    before = len(tree)
    tree.apply(ForkEvent(time.monotonic_ns(), 0, 9001, bash, bash, bash))  # a new thread
    tree.apply(ExitEvent(time.monotonic_ns(), 0, 9001, bash, 0, 0, bash, bash))
    assert len(tree) == before
    node = tree.node(bash)
    assert node is not None and node.alive


def test_lost_events_rescan_proc(world: World) -> None:
    bash = world.session()
    world.add(800, bash, "/usr/bin/sleep", "sleep", "60")
    tree = snap(world)
    world.procs.exit(800)  # both behind the tree's back
    world.add(801, bash, "/usr/bin/top", "top")
    world.conn.inject_lost()
    world.pump()
    gone, new = tree.node(800), tree.node(801)
    assert gone is not None and not gone.alive
    assert new is not None and new.info.exe == "/usr/bin/top"


def test_concurrent_readers_and_writer(world: World) -> None:
    bash = world.session()
    tree = snap(world)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(300):
                for pid in tree.children(bash):
                    tree.chain_below_boundary(pid)
                    tree.describe(pid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for pid in range(1000, 1300):
        world.fork(bash, pid)
        world.exec(pid, "/usr/bin/true", "true")
        world.exit(pid)
    for thread in readers:
        thread.join(10)
    assert errors == []


# -- trust ------------------------------------------------------------------------------------


def test_package_managers_and_their_children_are_trusted(world: World) -> None:
    bash = world.session()
    world.add(900, bash, "/usr/bin/sudo", "sudo", "apt", "upgrade")
    world.add(901, 900, "/usr/bin/apt", "apt", "upgrade")
    world.add(902, 901, "/usr/bin/dpkg", "/usr/bin/dpkg", "--configure", "-a")
    world.add(903, 902, "/usr/bin/dash", "/bin/sh", "/var/lib/dpkg/info/x.postinst")
    world.add(904, 1, "/usr/bin/python3.11", "/usr/bin/python3", "/usr/bin/unattended-upgrade")
    world.add(905, bash, "/usr/bin/python3.11", "python3", "-m", "pip", "install", "x")
    tree = snap(world)
    assert all(tree.trusted(p) for p in (901, 902, 903, 904, 905))
    assert not tree.trusted(bash) and not tree.trusted(900)


def test_trust_does_not_cross_a_boundary_or_follow_names_in_tmp(world: World) -> None:
    bash = world.session()
    world.add(910, bash, "/usr/bin/apt", "apt")
    world.add(911, 910, "/usr/bin/su", "su", "postgres")
    world.add(912, 911, "/usr/bin/dash", "sh", "-c", "x")
    world.add(913, bash, "/tmp/apt", "/tmp/apt")
    world.add(914, bash, "/usr/bin/python3.11", "python3", "/dev/shm/pip")
    tree = snap(world)
    assert not tree.trusted(912)
    assert not tree.trusted(913) and not tree.trusted(914)


def test_backup_tools_from_policy_by_name_or_path(world: World) -> None:
    bash = world.session()
    world.add(920, bash, "/usr/bin/borg", "borg", "create")
    world.add(921, bash, "/opt/restic/restic", "restic", "backup")
    tree = snap(world)
    assert tree.trusted(920, ["/usr/bin/borg"]) and tree.trusted(921, ["restic"])
    assert not tree.trusted(920)


# -- command lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "args", "expected"),
    [
        ("python", ["-c", "print(1)"], Invocation("python", inline="print(1)")),
        ("python", ["-Ic", "x"], Invocation("python", inline="x")),
        ("python", ["-m", "http.server"], Invocation("python", module="http.server")),
        ("python", ["-W", "ignore", "app.py", "-c"], Invocation("python", script="app.py")),
        ("python", [], Invocation("python")),
        ("shell", ["-ec", "id"], Invocation("shell", inline="id")),
        ("shell", ["-o", "pipefail", "run.sh"], Invocation("shell", script="run.sh")),
        ("shell", ["-s", "--", "-y"], Invocation("shell")),
        ("shell", ["--", "x.sh"], Invocation("shell", script="x.sh")),
        ("perl", ["-ne", "print"], Invocation("perl", inline="print")),
        ("node", ["--eval", "1"], Invocation("node", inline="1")),
        ("php", ["-d", "a=1", "-r", "echo 1;"], Invocation("php", inline="echo 1;")),
        ("php", ["-f", "index.php"], Invocation("php", script="index.php")),
    ],
)
def test_parse_invocation(family: str, args: list[str], expected: Invocation) -> None:
    assert parse_invocation(family, args) == expected


def test_program_names() -> None:
    info = _info("/usr/bin/python3.11", "/usr/bin/python3", "/usr/bin/unattended-upgrade")
    names = program_names(info)
    assert {"python3.11", "python", "unattended-upgrade", "unattended-upgr"} <= names
    assert "/usr/bin/unattended-upgrade" in names and "comm" not in names
    assert "comm" in program_names(info, with_comm=True)
    assert "wget" in program_names(_info("/bin/busybox", "wget", "x"))
    assert invocation(_info("/usr/bin/vim", "vim")) is None


def _info(exe: str, *argv: str) -> ProcessInfo:
    return FakeProcesses().add(77, exe=exe, cmdline=argv, comm="comm")


@given(
    exe=st.one_of(st.none(), st.text(max_size=40)),
    argv=st.lists(st.text(max_size=20), max_size=8),
)
def test_names_never_raise(exe: str | None, argv: list[str]) -> None:
    info = dataclasses.replace(_info("/x", "x"), exe=exe, cmdline=tuple(argv))
    program_names(info, with_comm=True)
    invocation(info)


# -- the real kernel --------------------------------------------------------------------------


def _connector_missing() -> str | None:
    if os.geteuid() != 0:
        return "the proc connector tests run as root"
    try:
        with ProcConnector():
            return None
    except PlatformError as exc:
        return f"no proc connector here: {exc}"


_MISSING = _connector_missing()
real_kernel = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))
SLEEP = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")


class Watcher:
    """A listener thread as the module runs one: events into a real tree, tells at each exec."""

    def __init__(self, rules: TellRules | None = None) -> None:
        self.conn = ProcConnector()
        self.tree = ProcessTree(Processes())
        self.rules = rules
        self.tells: list[Tell] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-watcher", daemon=True)
        self._started: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Watcher:
        self.conn.open()
        self.tree.snapshot()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()
        for proc in self._started:  # only our own children, by pid
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert not self.errors, self.errors

    def start(self, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a child; it is killed (by pid) and reaped when the watcher ends."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kwargs)
        self._started.append(proc)
        return proc

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for event in self.conn.read(0.05):
                    self.tree.apply(event)
                    if isinstance(event, ExecEvent):
                        self.tells.extend(check_exec(self.tree, event.tgid, self.rules))
        except BaseException as exc:  # pragma: no cover - re-raised by __exit__
            self.errors.append(exc)

    def wait_for(self, done: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.01)
        return done()


@pytest.mark.root
@real_kernel
def test_real_fork_exec_exit() -> None:
    with Watcher() as watch:
        tree = watch.tree
        shell = watch.start("/bin/sh", "-c", "sleep 30 & wait")

        def sleeper() -> int | None:
            kids = tree.children(shell.pid)
            return kids[0] if kids else None

        assert watch.wait_for(lambda: sleeper() is not None)
        child = sleeper()
        assert child is not None
        assert watch.wait_for(lambda: (n := tree.node(child)) is not None and n.info.exe == SLEEP)
        node = tree.node(child)
        assert node is not None and node.info.cmdline == ("sleep", "30")
        # the test process is the "agent": a boundary, so the shell is the family root
        assert tree.chain_below_boundary(child) == [child, shell.pid]
        assert tree.family_of(child) == shell.pid
        os.kill(child, signal.SIGKILL)
        assert watch.wait_for(lambda: (n := tree.node(child)) is not None and not n.alive)
        shell.wait(timeout=5)
        assert watch.wait_for(lambda: (n := tree.node(shell.pid)) is not None and not n.alive)


@pytest.mark.root
@real_kernel
def test_real_script_family(tmp_path: Path) -> None:
    script = tmp_path / "per-file.sh"
    script.write_text("for i in 1 2 3; do sleep 0.2; done\n")
    with Watcher() as watch:
        tree = watch.tree
        proc = watch.start("/bin/bash", str(script))
        seen: set[int] = set()

        def kids() -> bool:
            seen.update(
                p for p in tree.children(proc.pid)
                if (n := tree.node(p)) is not None and n.info.exe == SLEEP
            )  # fmt: skip
            return len(seen) >= 3

        assert watch.wait_for(kids)
        assert {tree.family_of(p) for p in seen} == {proc.pid}
        assert all(tree.choose_family(p, lambda q: q == proc.pid) == proc.pid for p in seen)
        proc.wait(timeout=5)
