"""What a process runs: program names, interpreters and how they were invoked.

Helpers of :mod:`yoroi.modules.behavior.process_tree` and :mod:`~.tells`: names come from the
executable's file name (a multi-call busybox from argv[0], a script's interpreter from the
script or ``-m`` module), never from ``comm``, which any process may set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from yoroi.platform.linux.process import ProcessInfo

SHELLS = frozenset({"bash", "sh", "dash", "zsh", "fish", "ksh", "mksh", "ash", "rbash"})
UNTRUSTED_DIRS: tuple[str, ...] = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/", "/memfd:")
_BUSYBOX_SHELLS = frozenset({"sh", "ash", "hush"})
_VERSION = re.compile(r"[\d.]+$")

# per interpreter family: flags whose value is inline code, and other flags taking a value
_INLINE_FLAGS = {
    "python": ("-c",), "perl": ("-e", "-E"), "ruby": ("-e",), "php": ("-r",),
    "node": ("-e", "--eval", "-p", "--print"), "lua": ("-e",), "shell": ("-c",),
}  # fmt: skip
_VALUE_FLAGS = {
    "python": ("-W", "-X", "-Q"), "perl": ("-I", "-M", "-m"), "ruby": ("-I", "-r", "-C"),
    "php": ("-c", "-d", "-z"), "node": ("-r", "--require", "--import", "--loader"),
    "lua": ("-l",), "shell": ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"),
}  # fmt: skip
_FAMILIES = {"python": "python", "perl": "perl", "ruby": "ruby", "php": "php",
             "node": "node", "nodejs": "node", "lua": "lua", "luajit": "lua"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Invocation:
    """How an interpreter was started: a script, a ``-m`` module, or inline code (or none)."""

    family: str
    script: str | None = None
    module: str | None = None
    inline: str | None = None


def base_name(path: str) -> str:
    """The last component of ``path``."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _unversioned(name: str) -> str:
    return _VERSION.sub("", name) or name


def interpreter_family(info: ProcessInfo) -> str | None:
    """The interpreter family ("python", "perl", "node", "shell", ...) or None."""
    if shell_name(info) is not None:
        return "shell"
    exe = _unversioned(base_name(info.exe or ""))
    return _FAMILIES.get(exe)


def shell_name(info: ProcessInfo) -> str | None:
    """The shell this process runs ("bash", "sh" for busybox sh, ...), or None."""
    exe = _unversioned(base_name(info.exe or ""))
    if exe in SHELLS:
        return exe
    argv0 = base_name(info.cmdline[0]).lstrip("-") if info.cmdline else ""
    return argv0 if exe == "busybox" and argv0 in _BUSYBOX_SHELLS else None


def invocation(info: ProcessInfo) -> Invocation | None:
    """The script, module or inline code an interpreter runs; None for a non-interpreter."""
    family = interpreter_family(info)
    return None if family is None else parse_invocation(family, info.cmdline[1:])


def parse_invocation(family: str, args: Iterable[str]) -> Invocation:
    """Read interpreter options up to the first operand (the script) or the inline code."""
    inline_flags = _INLINE_FLAGS.get(family, ("-c", "-e"))
    value_flags = _VALUE_FLAGS.get(family, ())
    it = iter(args)
    for arg in it:
        if arg == "--" or not arg.startswith(("-", "+")) or arg in ("-", "+"):
            script = next(it, None) if arg == "--" else arg
            return Invocation(family, script=None if script in (None, "-") else script)
        if arg in inline_flags or _bundles_inline(arg, inline_flags):
            return Invocation(family, inline=next(it, ""))
        if family == "shell" and _bundles(arg, "s"):
            return Invocation(family)  # commands from stdin; what follows are its arguments
        if family == "python" and arg == "-m":
            return Invocation(family, module=next(it, None))
        if family == "php" and arg == "-f":
            return Invocation(family, script=next(it, None))
        if arg in value_flags:
            next(it, None)
    return Invocation(family)


def _bundles_inline(arg: str, inline_flags: tuple[str, ...]) -> bool:
    """``-ec``, ``-xc``, ``-ne``: short flags bundled, the last one taking the inline code."""
    if arg.startswith("--") or not arg.startswith("-") or len(arg) < 3:
        return False
    return any(len(flag) == 2 and arg.endswith(flag[1]) for flag in inline_flags)


def _bundles(arg: str, letter: str) -> bool:
    return arg.startswith("-") and not arg.startswith("--") and letter in arg[1:]


@lru_cache(maxsize=8192)
def program_names(info: ProcessInfo, with_comm: bool = False) -> frozenset[str]:
    """Names to match policy lists against: executable, busybox applet, script or module.

    Each comes as a file name, without its version ("python3.11", "python") and, for the
    executable and the script, as the full path too ("/usr/bin/borg"). Names longer than 15
    characters also appear cut to 15, as the kernel's ``comm`` shows them ("unattended-upgr").
    ``with_comm`` adds ``comm`` itself, which the process may have set.
    """
    names: set[str] = set()
    exe = base_name(info.exe) if info.exe else ""
    if info.exe:
        names |= {info.exe, exe, _unversioned(exe)}
    if exe == "busybox" and info.cmdline:
        names.add(base_name(info.cmdline[0]).lstrip("-"))
    how = invocation(info)
    for extra in (how.script, how.module) if how else ():
        if extra:
            names |= {extra, base_name(extra), _unversioned(base_name(extra))}
    if with_comm and info.comm:
        names.add(info.comm)
    return frozenset(names | {name[:15] for name in names if len(name) > 15})


def matches(names: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first name that one of the glob ``patterns`` matches, or None."""
    pats = tuple(patterns)
    return next((n for n in sorted(names) if any(fnmatchcase(n, p) for p in pats)), None)


def untrusted_location(info: ProcessInfo) -> bool:
    """The executable (or script) lives where anyone may write, or is deleted or a memfd."""
    how = invocation(info)
    paths = [info.exe or "", (how.script or "") if how else ""]
    return info.exe_deleted or any(p.startswith(UNTRUSTED_DIRS) for p in paths)


def fd_link(pid: int, fd: int) -> str | None:
    """Where descriptor ``fd`` of ``pid`` points ("/dev/pts/0", "socket:[123]"), or None."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
