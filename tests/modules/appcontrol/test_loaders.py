from __future__ import annotations

import os
from dataclasses import dataclass, field

from yoroi.modules.appcontrol.loaders import (
    LoadKind,
    LoadRules,
    ProcOpeners,
    ancestors,
    names_file,
)


@dataclass
class Proc:
    exe: str | None
    cmdline: tuple[str, ...] = ()
    cwd: str = "/srv"
    ppid: int = 1
    uid: int = 0


@dataclass
class TableOpeners:
    """Opener facts from a table, as /proc would give them."""

    procs: dict[int, Proc] = field(default_factory=dict)

    def exe(self, pid: int) -> str | None:
        return self.procs[pid].exe if pid in self.procs else None

    def cmdline(self, pid: int) -> tuple[str, ...]:
        return self.procs[pid].cmdline if pid in self.procs else ()

    def cwd(self, pid: int) -> str | None:
        return self.procs[pid].cwd if pid in self.procs else None

    def ppid(self, pid: int) -> int | None:
        return self.procs[pid].ppid if pid in self.procs else None

    def uid(self, pid: int) -> int | None:
        return self.procs[pid].uid if pid in self.procs else None


RULES = LoadRules()
LD = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def kind(proc: Proc, path: str) -> LoadKind | None:
    return RULES.classify(TableOpeners({7: proc}), 7, path)


def test_everything_the_loader_opens_is_code() -> None:
    assert kind(Proc(LD, (LD, "./tool")), "/srv/tool") is LoadKind.LOADER
    assert kind(Proc("/lib/ld-musl-x86_64.so.1"), "/srv/tool") is LoadKind.LOADER
    assert kind(Proc("/opt/rt/myloader"), "/srv/tool") is None
    custom = LoadRules(loader_names=("myloader",))
    opener = TableOpeners({7: Proc("/opt/rt/myloader")})
    assert custom.classify(opener, 7, "/srv/tool") is LoadKind.LOADER


def test_interpreters_reading_the_script_they_were_given() -> None:
    assert kind(Proc("/usr/bin/dash", ("sh", "x.sh")), "/srv/x.sh") is LoadKind.SCRIPT
    assert kind(Proc("/usr/bin/dash", ("/bin/sh", "./run")), "/srv/run") is LoadKind.SCRIPT
    perl = Proc("/usr/bin/perl", ("perl", "-w", "/srv/bin/tool"))
    assert kind(perl, "/srv/bin/tool") is LoadKind.SCRIPT
    assert kind(Proc("/usr/bin/php8.2", ("php", "index.php")), "/srv/index.php") is LoadKind.SCRIPT


def test_interpreters_loading_their_own_source_files() -> None:
    python = Proc("/usr/bin/python3.11", ("python3", "app.py"))
    assert kind(python, "/srv/lib/helper.py") is LoadKind.SCRIPT
    assert kind(python, "/srv/__pycache__/helper.cpython-311.pyc") is LoadKind.SCRIPT
    assert kind(Proc("/usr/bin/perl", ("perl", "x")), "/srv/Mod.pm") is LoadKind.SCRIPT


def test_data_reads_are_not_code() -> None:
    python = Proc("/usr/bin/python3.11", ("python3", "app.py"))
    assert kind(python, "/srv/data.json") is None
    assert kind(Proc("/usr/bin/cat", ("cat", "x.sh")), "/srv/x.sh") is None
    assert kind(Proc("/usr/bin/dash", ("sh", "-c", "cat conf")), "/srv/conf") is None
    assert kind(Proc(None), "/srv/x.sh") is None  # the opener is gone


def test_shared_objects_are_code_whoever_opens_them() -> None:
    for path in ("/srv/libx.so", "/srv/libx.so.1", "/srv/libx.so.1.2.3"):
        assert kind(Proc("/usr/sbin/nginx"), path) is LoadKind.LIBRARY
    assert kind(Proc("/usr/sbin/nginx"), "/srv/so.txt") is None
    no_libs = LoadRules(libraries=False)
    assert no_libs.classify(TableOpeners({7: Proc("/x")}), 7, "/srv/libx.so") is None


def test_names_file_resolves_relative_arguments() -> None:
    assert names_file(("../bin/x.sh",), "/srv/www", "/srv/bin/x.sh")
    assert not names_file(("-x.sh",), "/srv", "/srv/-x.sh")
    assert not names_file(("x.sh",), "/other", "/srv/x.sh")


def test_names_file_follows_a_symlinked_directory(tmp_path: object) -> None:
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "real"))
    open(os.path.join(root, "real", "x.sh"), "w").close()
    os.symlink(os.path.join(root, "real"), os.path.join(root, "link"))
    assert names_file(("link/x.sh",), root, os.path.join(root, "real", "x.sh"))


def test_proc_openers_read_this_process() -> None:
    openers = ProcOpeners()
    me = os.getpid()
    assert openers.exe(me) == os.readlink("/proc/self/exe")
    assert openers.cwd(me) == os.getcwd()
    assert openers.cmdline(me)[0]
    assert openers.ppid(me) == os.getppid()
    assert openers.uid(me) == os.geteuid()
    assert openers.exe(2**22 + 1) is None and openers.cmdline(2**22 + 1) == ()
    assert ancestors(openers, me)[0] == os.getppid()


def test_ancestors_stop_on_a_loop() -> None:
    table = TableOpeners({5: Proc("/a", ppid=6), 6: Proc("/b", ppid=5)})
    assert ancestors(table, 5) == [6]
