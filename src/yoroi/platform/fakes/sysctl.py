"""An in-memory twin of :class:`yoroi.platform.linux.sysctl.Sysctl` for unit tests.

::

    sysctl = FakeSysctl({"vm.memfd_noexec": "0"})
    sysctl.write("vm.memfd_noexec", "2")
    sysctl.writes                     # [("vm.memfd_noexec", "2")]

A name it does not hold raises :class:`~yoroi.errors.Unsupported` (as a kernel without the
tunable does); ``read_only=True`` makes writes raise :class:`~yoroi.errors.PermissionDenied`.
"""

from __future__ import annotations

from yoroi.errors import PermissionDenied, Unsupported
from yoroi.platform.linux.sysctl import sysctl_path


class FakeSysctl:
    """Twin of ``Sysctl`` over a dict the test controls; records every write."""

    def __init__(self, values: dict[str, str] | None = None, *, read_only: bool = False) -> None:
        self.values = dict(values or {})
        self.read_only = read_only
        self.writes: list[tuple[str, str]] = []

    def read(self, name: str) -> str:
        """The value held for ``name``."""
        sysctl_path(name)
        if name not in self.values:
            raise Unsupported(f"this kernel has no sysctl {name} (needs a newer kernel)")
        return self.values[name]

    def write(self, name: str, value: str) -> None:
        """Set ``name`` (it must exist) and record the write."""
        self.read(name)
        if self.read_only:
            raise PermissionDenied(f"sysctl {name} could not be set: run as root")
        self.values[name] = value
        self.writes.append((name, value))
