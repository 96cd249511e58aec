"""System state read from /proc: listening sockets, loaded kernel modules, sysctls, mounts.

Integrity monitoring diffs these between two moments (``yoroi.modules.integrity.entities``).
:class:`System` is the real reader (:class:`SystemLike` the interface it shares with
``yoroi.platform.fakes.system.FakeSystem``); every method reads afresh, nothing is cached::

    /proc/net/{tcp,tcp6,udp,udp6}   sockets of the reader's network namespace: TCP in state
                                    LISTEN (0A), UDP bound and unconnected (07, remote port 0)
    /proc/PID/fd/*                  "socket:[INODE]" links: which processes hold each socket
    /proc/modules                   "name size refcount used_by state address [taint]"
    /proc/sys/a/b/c                 the sysctl a.b.c (dots and slashes swap, as sysctl(8) does)
    /proc/self/mountinfo            mount points of pseudo file systems, for walks to skip

Addresses in /proc/net are the kernel's bytes printed as native-endian 32-bit words, so they
are decoded with this machine's byte order. A socket only a process we may not inspect holds
has no pids (as ``ss -p`` shows it without a process); so do kernel sockets. A kernel built
without loadable-module support has no /proc/modules: :meth:`System.kernel_modules` then
raises :class:`~yoroi.errors.Unsupported`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from yoroi.errors import PermissionDenied, PlatformError, Unsupported

PROTOCOLS = ("tcp", "tcp6", "udp", "udp6")
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
PSEUDO_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs",
    "tracefs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs",
    "binfmt_misc", "efivarfs", "selinuxfs", "rpc_pipefs", "nsfs", "nfsd",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """A socket waiting for peers, and the processes holding it (ascending pids)."""

    proto: str  # tcp, tcp6, udp, udp6
    address: str  # "0.0.0.0", "::1" (no brackets)
    port: int
    uid: int  # the socket's owner, as /proc/net shows it
    inode: int
    pids: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """``tcp/0.0.0.0:22``, ``tcp6/[::]:22``: how integrity names the port."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto}/{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class KernelModule:
    """One loaded kernel module, as /proc/modules lists it."""

    name: str
    size: int
    refcount: int
    used_by: tuple[str, ...]
    state: str  # Live, Loading, Unloading
    taint: str = ""  # "(OE)" flags, "" when untainted


class SystemLike(Protocol):
    """What integrity monitoring reads about the running system."""

    def listening_sockets(self) -> list[ListeningSocket]: ...
    def kernel_modules(self) -> dict[str, KernelModule]: ...
    def sysctls(self, patterns: Iterable[str]) -> dict[str, str]: ...
    def pseudo_mounts(self) -> list[str]: ...


def decode_address(hex_address: str) -> str:
    """The text form of a /proc/net address field (8 hex digits for IPv4, 32 for IPv6)."""
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = b"".join(word.to_bytes(4, sys.byteorder) for word in words)
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"  # as ss(8) shows it, whatever Python's version
    return str(address)


def parse_net(text: str, proto: str) -> list[ListeningSocket]:
    """Listening sockets of one /proc/net/{tcp,tcp6,udp,udp6} table (without pids)."""
    wanted = _TCP_LISTEN if proto.startswith("tcp") else _UDP_UNCONNECTED
    found: list[ListeningSocket] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != wanted:
            continue
        local, remote = fields[1].split(":"), fields[2].split(":")
        if proto.startswith("udp") and int(remote[1], 16) != 0:
            continue
        found.append(ListeningSocket(
            proto=proto, address=decode_address(local[0]), port=int(local[1], 16),
            uid=int(fields[7]), inode=int(fields[9]),
        ))  # fmt: skip
    return found


def parse_modules(text: str) -> dict[str, KernelModule]:
    """The modules of a /proc/modules text, by name (malformed lines skipped)."""
    modules: dict[str, KernelModule] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or not fields[1].isdigit():
            continue
        used = tuple(name for name in fields[3].split(",") if name and name != "-")
        taint = fields[6] if len(fields) > 6 else ""
        modules[fields[0]] = KernelModule(
            name=fields[0], size=int(fields[1]), refcount=int(fields[2]) if fields[2].isdigit()
            else -1, used_by=used, state=fields[4], taint=taint,
        )  # fmt: skip
    return modules


def sysctl_path(key: str) -> str:
    """``net.ipv4.conf.eth0/1.rp_filter`` → ``net/ipv4/conf/eth0.1/rp_filter`` (sysctl(8))."""
    return key.translate(str.maketrans("./", "/."))


def _sysctl_key(relative: str) -> str:
    return relative.translate(str.maketrans("/.", "./"))


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def parse_mountinfo(text: str, types: frozenset[str] = PSEUDO_FS) -> list[str]:
    """Mount points of the mounts whose file-system type is in ``types``."""
    points: list[str] = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and len(fields) >= 5 and tail.split(" ", 1)[0] in types:
            points.append(_unescape(fields[4]))
    return points


class System:
    """The real reader over /proc (``proc`` may point at another mount of it)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc

    def listening_sockets(self) -> list[ListeningSocket]:
        """Every listening socket of this network namespace, with the pids that hold it."""
        found: list[ListeningSocket] = []
        for proto in PROTOCOLS:
            try:
                found += parse_net((self.proc / "net" / proto).read_text(), proto)
            except FileNotFoundError:
                continue  # no IPv6 in this kernel or namespace
            except OSError as exc:
                raise PlatformError(f"cannot read {self.proc}/net/{proto}: {exc}") from exc
        holders = self._holders({sock.inode for sock in found if sock.inode})
        return [
            ListeningSocket(s.proto, s.address, s.port, s.uid, s.inode, holders.get(s.inode, ()))
            for s in found
        ]

    def kernel_modules(self) -> dict[str, KernelModule]:
        """Loaded modules by name; Unsupported when the kernel cannot load modules."""
        try:
            return parse_modules((self.proc / "modules").read_text())
        except FileNotFoundError as exc:
            raise Unsupported(
                f"{self.proc}/modules is absent: this kernel was built without loadable modules"
            ) from exc
        except PermissionError as exc:
            raise PermissionDenied(f"cannot read {self.proc}/modules: {exc}") from exc

    def sysctls(self, patterns: Iterable[str]) -> dict[str, str]:
        """Values of the keys the patterns name (``*`` globs allowed); unreadable keys left out."""
        values: dict[str, str] = {}
        for pattern in patterns:
            for key in self._expand(pattern):
                value = self._read_sysctl(key)
                if value is not None:
                    values[key] = value
        return values

    def pseudo_mounts(self) -> list[str]:
        """Mount points of pseudo file systems (proc, sysfs, cgroup...) as we see them."""
        try:
            return parse_mountinfo((self.proc / "self" / "mountinfo").read_text())
        except OSError as exc:
            raise PlatformError(f"cannot read {self.proc}/self/mountinfo: {exc}") from exc

    def _holders(self, inodes: set[int]) -> dict[int, tuple[int, ...]]:
        wanted = {f"socket:[{inode}]": inode for inode in inodes}
        holders: dict[int, list[int]] = {}
        for pid in sorted(int(name) for name in os.listdir(self.proc) if name.isdigit()):
            for inode in self._sockets_of(pid, wanted):
                holders.setdefault(inode, []).append(pid)
        return {inode: tuple(pids) for inode, pids in holders.items()}

    def _sockets_of(self, pid: int, wanted: dict[str, int]) -> set[int]:
        fd_dir = f"{self.proc}/{pid}/fd"
        held: set[int] = set()
        try:
            names = os.listdir(fd_dir)
        except OSError:  # exited, or not ours to read
            return held
        for name in names:
            try:
                link = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if link in wanted:
                held.add(wanted[link])
        return held

    def _expand(self, pattern: str) -> list[str]:
        base = self.proc / "sys"
        if not any(ch in pattern for ch in "*?["):
            return [pattern]
        parts = sysctl_path(pattern).split("/")
        paths = [base]
        for part in parts:
            paths = [child for path in paths for child in _match(path, part)]
        return sorted(_sysctl_key(str(path.relative_to(base))) for path in paths)

    def _read_sysctl(self, key: str) -> str | None:
        try:
            raw = (self.proc / "sys" / sysctl_path(key)).read_bytes()
        except OSError:  # absent on this kernel, write-only, or a directory
            return None
        return " ".join(raw.decode(errors="replace").split())


def _match(directory: Path, part: str) -> list[Path]:
    if not any(ch in part for ch in "*?["):
        return [directory / part]
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / name for name in names if fnmatch.fnmatchcase(name, part)]
