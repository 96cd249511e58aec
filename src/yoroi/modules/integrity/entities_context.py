"""What every entity collector is handed: the options of a snapshot and a place for notices."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from yoroi.platform.linux.dpkg import DpkgDatabase, PackageDatabase
from yoroi.platform.linux.process import Processes, ProcessesLike
from yoroi.platform.linux.system import System, SystemLike

log = logging.getLogger("yoroi.integrity.entities")

Record = dict[str, object]  # JSON-able: str, int, bool, None, lists and dicts of them
Records = dict[str, Record]

SUID_ROOTS = (
    "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin",
    "/usr/lib", "/usr/libexec", "/usr/local/lib", "/lib", "/opt",
)  # fmt: skip
SYSCTL_KEYS = (
    "kernel.randomize_va_space", "kernel.kptr_restrict", "kernel.dmesg_restrict",
    "kernel.yama.ptrace_scope", "kernel.unprivileged_bpf_disabled", "kernel.kexec_load_disabled",
    "kernel.modules_disabled", "kernel.sysrq", "kernel.core_pattern", "kernel.perf_event_paranoid",
    "kernel.unprivileged_userns_clone", "user.max_user_namespaces", "dev.tty.ldisc_autoload",
    "fs.protected_*", "fs.suid_dumpable", "vm.mmap_min_addr", "net.core.bpf_jit_harden",
    "net.ipv4.ip_forward", "net.ipv4.tcp_syncookies", "net.ipv4.icmp_echo_ignore_broadcasts",
    "net.ipv4.conf.all.*redirects", "net.ipv4.conf.default.*redirects",
    "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.accept_source_route",
    "net.ipv4.conf.all.log_martians", "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.all.accept_source_route",
)  # fmt: skip
AUTHORIZED_KEYS_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")


@dataclass
class SnapshotOptions:
    """How to take a snapshot: the root to read files under and the adapters to ask.

    ``root`` is where /etc, /var and the unit directories are read (a mounted image or a test
    tree); ports, kernel modules and sysctls come from ``system`` whatever the root is.
    Adapters left ``None`` are the real ones, built on first use.
    """

    root: Path = Path("/")
    suid_roots: tuple[str, ...] = SUID_ROOTS
    suid_max_entries: int = 2_000_000
    sysctl_keys: tuple[str, ...] = SYSCTL_KEYS
    authorized_keys_files: tuple[str, ...] = AUTHORIZED_KEYS_FILES
    system: SystemLike | None = None
    processes: ProcessesLike | None = None
    packages: PackageDatabase | None = None


@dataclass
class Context:
    """One snapshot in progress: its options, adapters and the notices it collects."""

    options: SnapshotOptions
    notices: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.options.root

    @cached_property
    def system(self) -> SystemLike:
        return self.options.system or System()

    @cached_property
    def processes(self) -> ProcessesLike:
        return self.options.processes or Processes()

    @cached_property
    def packages(self) -> PackageDatabase:
        return self.options.packages or DpkgDatabase(self.root)

    def path(self, absolute: str) -> Path:
        """``absolute`` (a path on the monitored system) under the snapshot's root."""
        return self.root / absolute.lstrip("/")

    def notice(self, message: str) -> None:
        """Note something skipped; the snapshot goes on."""
        log.info("%s", message)
        self.notices.append(message)

    def read_text(self, absolute: str, *, quiet_missing: bool = True) -> str | None:
        """The file's text, or None (with a notice unless it is merely absent)."""
        try:
            return self.path(absolute).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if not quiet_missing:
                self.notice(f"{absolute}: absent, skipped")
            return None
        except OSError as exc:
            self.notice(f"{absolute}: unreadable ({exc.strerror or exc}), skipped")
            return None

    def listdir(self, absolute: str) -> list[str]:
        """Sorted names in a directory; empty when absent, with a notice when unreadable."""
        try:
            return sorted(os.listdir(self.path(absolute)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self.notice(f"{absolute}: unreadable ({exc.strerror or exc}), skipped")
            return []

    def sha256(self, absolute: str) -> str | None:
        """Hex SHA-256 of a file's content, or None (with a notice) when unreadable."""
        digest = hashlib.sha256()
        try:
            with open(self.path(absolute), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            self.notice(f"{absolute}: unreadable ({exc.strerror or exc}), not hashed")
            return None
        return digest.hexdigest()


Collector = Callable[[Context], Records]


def logical_lines(text: str) -> Iterator[str]:
    """Lines with backslash continuations joined and whitespace collapsed; blanks dropped."""
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = " ".join((pending + raw).split())
        pending = ""
        if line:
            yield line
    if pending.strip():
        yield " ".join(pending.split())
