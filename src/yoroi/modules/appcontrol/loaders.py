"""Which plain opens are code loads: the loader run as a program, scripts, shared libraries.

``FAN_OPEN_EXEC_PERM`` only reports opens that carry ``__FMODE_EXEC``: ``execve`` (the program and
its ELF interpreter) and ``uselib``. Code loaded any other way arrives as a plain open
(``FAN_OPEN_PERM``), indistinguishable by the event alone from reading data. :class:`LoadRules`
names the opens the enforcer judges; every other open is allowed at once, without any I/O:

* ``LOADER``: the opener's executable is the dynamic loader (``ld-linux*.so*``, ``ld.so``), i.e.
  ``/lib64/ld-linux-x86-64.so.2 ./tool``: everything it opens is code (libraries or the program).
* ``SCRIPT``: the opener's executable is an interpreter (``sh``, ``bash``, ``python3*``, ``perl``,
  ``php``...) and either its command line names the opened file (``sh x.sh``, ``python3 x.py``,
  and ``./x.sh`` whose kernel-made command line is ``/bin/sh ./x.sh``), or the file carries that
  interpreter's source suffix (``.py``/``.pyc`` imported by python, ``.pm`` by perl, a sourced
  ``.sh`` by a shell).
* ``LIBRARY``: the file name is ``*.so`` or ``*.so.*``, opened by any process (``dlopen`` and the
  libraries ld.so maps at exec; their ``mmap(PROT_EXEC)`` has no fanotify event at all).

Not covered (documented in ``docs/appcontrol.md``): a script fed on standard input
(``sh < x``, ``curl | sh``), code given on the command line (``sh -c``, ``python3 -c``), a
shared library whose name lacks ``.so`` dlopen'ed by a process that is not the loader, and code an
interpreter reads under another suffix without naming it on its command line.

The opener facts come from ``/proc/PID/{exe,cmdline,cwd}`` (:class:`ProcOpeners`), read only
for opens on the watched paths.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_LOADERS = ("ld-linux*.so*", "ld-*.so*", "ld.so", "ld64.so*")
DEFAULT_INTERPRETERS = (
    "sh", "dash", "bash", "zsh", "ksh", "mksh", "busybox", "python*", "pypy*", "perl*",
    "php*", "ruby*", "node", "nodejs", "lua*", "tclsh*", "awk", "gawk", "mawk", "Rscript",
)  # fmt: skip
_SUFFIXES = {
    "python": (".py", ".pyc", ".pyw"), "pypy": (".py", ".pyc"), "perl": (".pl", ".pm"),
    "php": (".php", ".phtml", ".inc"), "ruby": (".rb",), "node": (".js", ".mjs", ".cjs"),
    "lua": (".lua",), "sh": (".sh",), "dash": (".sh",), "bash": (".sh", ".bash"),
    "zsh": (".sh", ".zsh"), "ksh": (".sh", ".ksh"), "busybox": (".sh",),
}  # fmt: skip
_LIBRARY = re.compile(r"\.so(\.[0-9A-Za-z_.-]*)?$")
_FAMILY = re.compile(r"^([a-z]+)")
_PARENTS_MAX = 8


class LoadKind(enum.StrEnum):
    """How a file was about to become code."""

    EXEC = "exec"  # execve of the file (FAN_OPEN_EXEC_PERM)
    LOADER = "loader"  # opened by the dynamic loader run as a program
    SCRIPT = "script"  # read by an interpreter as its program
    LIBRARY = "library"  # a shared object opened (dlopen, DT_NEEDED)
    MEMFD = "memfd"  # executed from a memfd


@dataclass(frozen=True)
class Execution:
    """Who tried to run what: the process behind an event, read when it was reported."""

    pid: int
    path: str
    kind: LoadKind
    exe: str | None
    cmdline: tuple[str, ...]
    parents: tuple[tuple[int, str | None], ...]  # (pid, exe), parent first


class OpenersLike(Protocol):
    """What the enforcer reads about the process behind an event (None: it is gone)."""

    def exe(self, pid: int) -> str | None: ...
    def cmdline(self, pid: int) -> tuple[str, ...]: ...
    def cwd(self, pid: int) -> str | None: ...
    def ppid(self, pid: int) -> int | None: ...
    def uid(self, pid: int) -> int | None: ...


class ProcOpeners:
    """Opener facts read straight from ``/proc`` (a few microseconds each, no psutil)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc

    def exe(self, pid: int) -> str | None:
        """The opener's executable (its path before any exec in progress completes)."""
        return self._link(pid, "exe")

    def cwd(self, pid: int) -> str | None:
        """The opener's working directory, to resolve relative script names."""
        return self._link(pid, "cwd")

    def cmdline(self, pid: int) -> tuple[str, ...]:
        """The opener's arguments; empty when gone or unreadable."""
        try:
            with open(f"{self._proc}/{pid}/cmdline", "rb") as handle:
                raw = handle.read()
        except OSError:
            return ()
        return tuple(os.fsdecode(arg) for arg in raw.split(b"\0")[:-1])

    def ppid(self, pid: int) -> int | None:
        """The parent's pid, from ``/proc/PID/stat`` (after the last ``)`` of the name)."""
        try:
            with open(f"{self._proc}/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1])

    def uid(self, pid: int) -> int | None:
        """The opener's effective uid (the owner of ``/proc/PID``)."""
        try:
            return os.stat(f"{self._proc}/{pid}").st_uid
        except OSError:
            return None

    def _link(self, pid: int, name: str) -> str | None:
        try:
            return os.readlink(f"{self._proc}/{pid}/{name}")
        except OSError:
            return None


def ancestors(openers: OpenersLike, pid: int, limit: int = 64) -> list[int]:
    """``pid``'s parent, grandparent, ... up to (not including) 0; stops on a loop or gap."""
    chain: list[int] = []
    ppid = openers.ppid(pid)
    while ppid and ppid != pid and ppid not in chain and len(chain) < limit:
        chain.append(ppid)
        ppid = openers.ppid(ppid)
    return chain


def describe(openers: OpenersLike, pid: int, path: str, kind: LoadKind) -> Execution:
    """The report of ``pid`` loading ``path``: its executable, arguments and parent chain."""
    parents = ancestors(openers, pid, _PARENTS_MAX)
    return Execution(
        pid=pid,
        path=path,
        kind=kind,
        exe=openers.exe(pid),
        cmdline=openers.cmdline(pid),
        parents=tuple((parent, openers.exe(parent)) for parent in parents),
    )


def _matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


@dataclass(frozen=True)
class LoadRules:
    """The precompiled rule telling code loads from data reads, for one ``FAN_OPEN_PERM`` event."""

    interpreters: Sequence[str] = DEFAULT_INTERPRETERS
    loader_names: Sequence[str] = DEFAULT_LOADERS
    libraries: bool = True
    _interp: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _loader: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_interp", _matcher(self.interpreters))
        object.__setattr__(self, "_loader", _matcher(self.loader_names))

    def classify(self, openers: OpenersLike, pid: int, path: str) -> LoadKind | None:
        """The kind of code load this open is, or None for a plain data read."""
        exe = openers.exe(pid)
        name = os.path.basename(exe) if exe else ""
        if name and self._loader.match(name):
            return LoadKind.LOADER
        if name and self._interp.match(name) and self._is_script(openers, pid, name, path):
            return LoadKind.SCRIPT
        if self.libraries and _LIBRARY.search(path):
            return LoadKind.LIBRARY
        return None

    def _is_script(self, openers: OpenersLike, pid: int, interpreter: str, path: str) -> bool:
        family = _FAMILY.match(interpreter)
        if family and path.endswith(_SUFFIXES.get(family.group(1), ())):
            return True
        return names_file(openers.cmdline(pid)[1:], openers.cwd(pid), path)


def names_file(args: Sequence[str], cwd: str | None, path: str) -> bool:
    """True when one of ``args`` (relative to ``cwd``) is ``path``, compared by name, then by
    inode when only the base names agree (a symlinked directory on the way)."""
    base = os.path.basename(path)
    for arg in args:
        if not arg or arg.startswith("-") or os.path.basename(arg) != base:
            continue
        full = os.path.normpath(os.path.join(cwd or "/", arg))
        if full == path or _same_file(full, path):
            return True
    return False


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False
