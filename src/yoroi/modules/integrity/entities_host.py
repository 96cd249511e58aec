"""Entity collectors for the running host: packages, listening ports, kernel modules, SUID and
SGID files, sysctl values.

Ports, kernel modules and sysctls are read from the running kernel (through ``SystemLike``)
whatever the snapshot's root is; packages and SUID files are read under the root.
"""

from __future__ import annotations

import os
import stat

from yoroi.errors import PlatformError, ProcessGone, Unsupported
from yoroi.modules.integrity.entities_context import Context, Record, Records
from yoroi.platform.linux.process import user_name
from yoroi.platform.linux.system import ListeningSocket

_SPECIAL = stat.S_ISUID | stat.S_ISGID


def collect_packages(ctx: Context) -> Records:
    """Installed packages (dpkg's key) with version, architecture and dpkg state."""
    try:
        packages = ctx.packages.packages()
    except PlatformError as exc:
        ctx.notice(f"packages: {exc}, skipped")
        return {}
    return {
        key: {"version": p.version, "arch": p.architecture, "state": p.state}
        for key, p in sorted(packages.items())
    }


def _owner(ctx: Context, sock: ListeningSocket, pids: list[int]) -> Record:
    record: Record = {"pid": None, "exe": None, "comm": None, "user": user_name(sock.uid)}
    for pid in sorted(pids):
        try:
            info = ctx.processes.read(pid)
        except (ProcessGone, PlatformError):
            continue  # exited meanwhile, or not ours to read: try the next holder
        record.update(pid=pid, exe=info.exe, comm=info.comm, user=info.user or record["user"])
        break
    return record


def collect_ports(ctx: Context) -> Records:
    """Listening sockets (``tcp/0.0.0.0:22``) with the lowest pid holding each, its exe and user."""
    try:
        sockets = ctx.system.listening_sockets()
    except PlatformError as exc:
        ctx.notice(f"ports: {exc}, skipped")
        return {}
    merged: dict[str, tuple[ListeningSocket, list[int]]] = {}
    for sock in sockets:  # SO_REUSEPORT: several sockets, one port
        first, pids = merged.setdefault(sock.key, (sock, []))
        pids.extend(sock.pids)
    return {key: _owner(ctx, sock, pids) for key, (sock, pids) in sorted(merged.items())}


def collect_kernel_modules(ctx: Context) -> Records:
    """Loaded kernel modules with size, state and taint flags (none on a module-less kernel)."""
    try:
        modules = ctx.system.kernel_modules()
    except Unsupported as exc:
        ctx.notice(f"kernel modules: {exc}")
        return {}
    except PlatformError as exc:
        ctx.notice(f"kernel modules: {exc}, skipped")
        return {}
    return {
        name: {"size": m.size, "state": m.state, "taint": m.taint}
        for name, m in sorted(modules.items())
    }


def collect_sysctls(ctx: Context) -> Records:
    """Values of the policy's sysctl keys (globs expanded); keys this kernel lacks left out."""
    values = ctx.system.sysctls(ctx.options.sysctl_keys)
    return {key: {"value": value} for key, value in sorted(values.items())}


class _SuidWalk:
    """A bounded walk of the roots that never follows links or enters pseudo file systems."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.left = ctx.options.suid_max_entries
        self.found: Records = {}
        try:
            mounts = ctx.system.pseudo_mounts()
        except PlatformError as exc:
            ctx.notice(f"suid: {exc}; pseudo file systems not known")
            mounts = []
        self.skip = {os.path.realpath(m) for m in mounts}

    def run(self) -> Records:
        seen: set[str] = set()
        for root in self.ctx.options.suid_roots:
            real = os.path.realpath(self.ctx.path(root))
            if real in seen or real in self.skip or not os.path.isdir(real):
                continue
            seen.add(real)
            self._walk(root)
        return dict(sorted(self.found.items()))

    def _walk(self, top: str) -> None:
        stack = [top]
        while stack and self.left > 0:
            directory = stack.pop()
            local = str(self.ctx.path(directory))
            if local in self.skip:
                continue
            try:
                entries = list(os.scandir(local))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.ctx.notice(f"{directory}: unreadable ({exc.strerror or exc}), skipped")
                continue
            self.left -= len(entries)
            for entry in entries:
                self._visit(f"{directory.rstrip('/')}/{entry.name}", entry, stack)
        if self.left <= 0:
            self.ctx.notice(f"suid: walk stopped after {self.ctx.options.suid_max_entries} entries")

    def _visit(self, path: str, entry: os.DirEntry[str], stack: list[str]) -> None:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISDIR(info.st_mode):
            stack.append(path)
        elif stat.S_ISREG(info.st_mode) and info.st_mode & _SPECIAL:
            self.found[path] = {
                "mode": f"{stat.S_IMODE(info.st_mode):04o}", "uid": info.st_uid,
                "gid": info.st_gid, "size": info.st_size, "sha256": self.ctx.sha256(path),
            }  # fmt: skip


def collect_suid(ctx: Context) -> Records:
    """Regular files with the set-user-ID or set-group-ID bit under the SUID roots."""
    return _SuidWalk(ctx).run()


COLLECTORS = {
    "package": collect_packages,
    "port": collect_ports,
    "kmod": collect_kernel_modules,
    "sysctl": collect_sysctls,
    "suid": collect_suid,
}
