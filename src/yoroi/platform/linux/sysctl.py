"""Kernel tunables (sysctl) read and written through ``/proc/sys``.

:class:`Sysctl` is the real adapter; :class:`SysctlLike` is the interface it shares with
``yoroi.platform.fakes.sysctl.FakeSysctl``. Names use dots (``vm.memfd_noexec``), as sysctl(8)
does; values are the kernel's text without the trailing newline::

    sysctl = Sysctl()
    old = sysctl.read("vm.memfd_noexec")      # "0"
    sysctl.write("vm.memfd_noexec", "2")

Errors: a tunable this kernel lacks raises :class:`~yoroi.errors.Unsupported`; a write refused for
lack of privilege raises :class:`~yoroi.errors.PermissionDenied`; a value the kernel refuses
(``EINVAL``, e.g. out of range) and any other failure raise :class:`~yoroi.errors.PlatformError`.
Some tunables are per namespace: ``vm.memfd_noexec`` belongs to the writer's pid namespace.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Protocol

from yoroi.errors import PermissionDenied, PlatformError, Unsupported

PROC_SYS = "/proc/sys"
_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")


class SysctlLike(Protocol):
    """Read and write one kernel tunable by its dotted name."""

    def read(self, name: str) -> str: ...
    def write(self, name: str, value: str) -> None: ...


def sysctl_path(name: str, root: str = PROC_SYS) -> str:
    """``vm.memfd_noexec`` -> ``/proc/sys/vm/memfd_noexec``; refuses anything but dotted words."""
    if not _NAME.match(name):
        raise ValueError(f"not a sysctl name: {name!r} (expected dotted words, e.g. vm.swappiness)")
    return os.path.join(root, *name.split("."))


class Sysctl:
    """The real adapter over ``/proc/sys`` (``root`` is for tests of the path mapping)."""

    def __init__(self, root: str = PROC_SYS) -> None:
        self._root = root

    def read(self, name: str) -> str:
        """The current value of ``name``, stripped of its trailing newline."""
        path = sysctl_path(name, self._root)
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read().rstrip("\n")
        except OSError as exc:
            raise _error(exc, name, "read") from exc

    def write(self, name: str, value: str) -> None:
        """Set ``name`` to ``value``."""
        path = sysctl_path(name, self._root)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _error(exc, name, "open") from exc
        try:
            os.write(fd, value.encode("ascii") + b"\n")
        except OSError as exc:
            raise _error(exc, name, f"set to {value!r}") from exc
        finally:
            os.close(fd)


def _error(exc: OSError, name: str, action: str) -> PlatformError:
    if exc.errno == errno.ENOENT:
        return Unsupported(f"this kernel has no sysctl {name} (needs a newer kernel)")
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"sysctl {name} could not be {action}d: run as root")
    if exc.errno == errno.EINVAL:
        return PlatformError(f"the kernel refused sysctl {name} {action}: invalid value")
    return PlatformError(f"sysctl {name} {action} failed: {exc.strerror}")
