"""An in-memory system for unit tests of integrity monitoring's entity snapshots.

:class:`FakeSystem` implements :class:`yoroi.platform.linux.system.SystemLike` from plain
collections a test fills and changes::

    system = FakeSystem(sysctl={"kernel.randomize_va_space": "2"})
    system.listen("tcp", "0.0.0.0", 22, pids=(812,))
    system.load_module("nf_tables", size=364544)
    system.sysctls(["kernel.*"])            # {"kernel.randomize_va_space": "2"}

``modules_supported=False`` makes :meth:`FakeSystem.kernel_modules` raise ``Unsupported``, as
a kernel without loadable-module support does. Glob patterns match keys with ``fnmatchcase``
(the real reader matches one path component per ``*``; keys here have no such structure).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from yoroi.errors import Unsupported
from yoroi.platform.linux.system import KernelModule, ListeningSocket


class FakeSystem:
    """Twin of ``System`` over lists and dicts a test controls."""

    def __init__(
        self,
        *,
        sysctl: dict[str, str] | None = None,
        pseudo_mounts: Iterable[str] = ("/proc", "/sys", "/dev"),
        modules_supported: bool = True,
    ) -> None:
        self.sockets: list[ListeningSocket] = []
        self.modules: dict[str, KernelModule] = {}
        self.sysctl = dict(sysctl or {})
        self.mounts = list(pseudo_mounts)
        self.modules_supported = modules_supported

    def listen(
        self, proto: str, address: str, port: int, *, uid: int = 0, pids: tuple[int, ...] = ()
    ) -> ListeningSocket:
        """Add a listening socket (a fresh inode each time) and return it."""
        sock = ListeningSocket(proto, address, port, uid, 10_000 + len(self.sockets), pids)
        self.sockets.append(sock)
        return sock

    def close(self, proto: str, address: str, port: int) -> None:
        """Remove every socket listening on that protocol, address and port."""
        self.sockets = [
            s for s in self.sockets if (s.proto, s.address, s.port) != (proto, address, port)
        ]

    def load_module(self, name: str, size: int = 16384, taint: str = "") -> KernelModule:
        """Add a loaded module and return it."""
        module = KernelModule(name, size, 0, (), "Live", taint)
        self.modules[name] = module
        return module

    def listening_sockets(self) -> list[ListeningSocket]:
        return list(self.sockets)

    def kernel_modules(self) -> dict[str, KernelModule]:
        if not self.modules_supported:
            raise Unsupported("this fake kernel was built without loadable modules")
        return dict(self.modules)

    def sysctls(self, patterns: Iterable[str]) -> dict[str, str]:
        values: dict[str, str] = {}
        for pattern in patterns:
            for key in sorted(self.sysctl):
                if fnmatch.fnmatchcase(key, pattern):
                    values[key] = self.sysctl[key]
        return values

    def pseudo_mounts(self) -> list[str]:
        return list(self.mounts)
