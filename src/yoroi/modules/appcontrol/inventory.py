"""The inventory: the software already on the host when application control is turned on.

An administrator expects that turning the module on does not break the running server, so the
inventory refuses nothing: every executable (any ``x`` bit), shared library (``*.so``,
``*.so.N``) and script with a shebang (``#!``) under the given directories becomes trusted.
Files that dpkg installed and whose MD5 still matches its record get the source ``package``;
the rest, including package files that differ from their record (counted and listed in the
report, so that an administrator can look), get ``inventory``. Each file is read once, by a
pool of threads (hashlib and ``read`` release the GIL), for its SHA-256 and, when dpkg records
it, its MD5.

Paths are recorded as the kernel names an executed file: directories given as symbolic links
(``/lib`` -> ``usr/lib`` on merged-/usr systems) are resolved, links inside are not followed,
and pseudo file systems (/proc, /sys, ...) are skipped. A file already in the trust database
with the same identity (device, inode, change time, size) is not read again.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yoroi.errors import UsageError
from yoroi.modules.antimalware.walker import pseudo_devices
from yoroi.modules.appcontrol.types import FileIdentity, Source, TrustEntry
from yoroi.platform.linux.dpkg import DpkgDatabase, PackageDatabase

if TYPE_CHECKING:  # the trust database reads files with this module's helpers
    from yoroi.modules.appcontrol.trust import TrustDatabase

STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
DEFAULT_GLOBS = ("/usr/lib*", "/lib*", "/opt", "/usr/local")
BATCH = 64
READ_SIZE = 1 << 20
PERMISSION_BITS = 0o7777
_LIBRARY = re.compile(r"\.so(?:\.[^/]*)?$")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class InventoryProgress:
    """How far an inventory is: files looked at, files read, bytes read."""

    seen: int
    hashed: int
    bytes: int


@dataclass
class InventoryReport:
    """What an inventory found and recorded."""

    dirs: list[str]
    recorded: dict[str, int] = field(default_factory=dict)  # by source
    hashed: int = 0  # read now
    reused: int = 0  # unchanged since the last inventory: not read again
    bytes: int = 0
    package_mismatches: list[str] = field(default_factory=list)  # dpkg's MD5 differs
    errors: list[tuple[str, str]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        """Files recorded as trusted."""
        return sum(self.recorded.values())

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {"dirs": self.dirs, "recorded": self.total, "by_source": self.recorded,
                "hashed": self.hashed, "reused": self.reused, "bytes": self.bytes,
                "package_mismatches": self.package_mismatches,
                "errors": [{"path": p, "error": e} for p, e in self.errors],
                "elapsed": round(self.elapsed, 3)}


@dataclass(frozen=True)
class _Task:
    path: str
    maybe: bool  # x bit or library name: a candidate whatever its first bytes
    recorded_md5s: frozenset[str]
    package: str | None


@dataclass(frozen=True)
class _Hashed:
    task: _Task
    entry: TrustEntry | None  # None: not code (no x bit, no .so, no shebang)
    identity: FileIdentity | None
    md5: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Digest:
    """What one read of a file yields."""

    sha256: str
    md5: str | None
    size: int


def hash_fd(fd: int, want_md5: bool = False) -> Digest:
    """SHA-256 (and MD5 when asked) of the file open at ``fd``, read with ``pread`` from
    offset 0 so that the descriptor's own offset is left alone."""
    sha = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
    offset = 0
    while chunk := os.pread(fd, READ_SIZE, offset):
        sha.update(chunk)
        if md5 is not None:
            md5.update(chunk)
        offset += len(chunk)
    return Digest(sha.hexdigest(), md5.hexdigest() if md5 else None, offset)


def identity_of(info: os.stat_result) -> FileIdentity:
    """The :class:`FileIdentity` of a ``stat`` result."""
    return FileIdentity(info.st_dev, info.st_ino, info.st_ctime_ns, info.st_size)


def default_dirs() -> list[str]:
    """PATH directories (the environment's and the standard ones), /usr/lib*, /lib*, /opt and
    /usr/local: resolved, existing, and without directories inside another one listed."""
    from_env = [d for d in os.environ.get("PATH", "").split(":") if d.startswith("/")]
    dirs = [*from_env, *STANDARD_PATH]
    for pattern in DEFAULT_GLOBS:
        dirs.extend(sorted(glob.glob(pattern)))
    return normalise_dirs(dirs)


def normalise_dirs(dirs: Iterable[str]) -> list[str]:
    """Resolved existing directories, none below another one of them."""
    real = sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})
    kept: list[str] = []
    for directory in real:
        if not any(directory == k or directory.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(directory)
    return kept


def is_library_name(name: str) -> bool:
    """``libc.so.6``, ``ld-linux-x86-64.so.2``, ``mod.so``."""
    return _LIBRARY.search(name) is not None


def walk(dirs: Iterable[str], skip_devices: frozenset[int]) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files below ``dirs`` with their ``lstat``; links are not followed."""
    stack = list(reversed(list(dirs)))
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev in skip_devices:
                continue
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                yield entry.path, info
        stack.extend(reversed(subdirs))


def run_inventory(
    db: TrustDatabase,
    dirs: Iterable[str] | None = None,
    *,
    packages: PackageDatabase | None = None,
    jobs: int | None = None,
    progress: Callable[[InventoryProgress], None] | None = None,
) -> InventoryReport:
    """Record the code under ``dirs`` (default :func:`default_dirs`) in ``db`` and save it.

    ``packages`` verifies package files (:func:`host_packages` for this host's dpkg database;
    None: no verification). Unreadable files are listed in the report's errors and left out.
    """
    started = time.monotonic()
    roots = normalise_dirs(dirs) if dirs is not None else default_dirs()
    report = InventoryReport(dirs=roots)
    found: list[tuple[TrustEntry, FileIdentity | None]] = []
    tasks = _tasks(db, roots, packages, report, found)
    workers = jobs or len(os.sched_getaffinity(0)) or 1
    seen = 0
    for batch in _hash_all(tasks, workers):
        for hashed in batch:
            seen += 1
            _account(hashed, report, found)
        if progress is not None:
            progress(InventoryProgress(seen + report.reused, report.hashed, report.bytes))
    db.replace_inventory(roots, found)
    db.save()
    report.elapsed = time.monotonic() - started
    return report


def host_packages() -> PackageDatabase | None:
    """This host's dpkg database, or None on a system without one."""
    database = DpkgDatabase()
    return database if (database.admindir / "status").exists() else None


def _tasks(db: TrustDatabase, roots: list[str], packages: PackageDatabase | None,
           report: InventoryReport,
           found: list[tuple[TrustEntry, FileIdentity | None]]) -> Iterator[_Task]:
    for path, info in walk(roots, pseudo_devices()):
        known = db.entry(path)
        ident = identity_of(info)
        if known is not None and known.source in (Source.INVENTORY, Source.PACKAGE) \
                and db.identity(path) == ident:
            found.append((known, ident))
            report.reused += 1
            report.recorded[known.source.value] = report.recorded.get(known.source.value, 0) + 1
            continue
        maybe = bool(info.st_mode & 0o111) or is_library_name(os.path.basename(path))
        recorded = packages.recorded_md5s(path) if packages is not None else frozenset()
        owner = packages.owner(path) if recorded and packages is not None else []
        yield _Task(path, maybe, recorded, owner[0] if owner else None)


def _hash_all(tasks: Iterator[_Task], workers: int) -> Iterator[list[_Hashed]]:
    """Batches of hashed files, in order, with a bounded number of batches in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inventory") as pool:
        pending: deque[Future[list[_Hashed]]] = deque()
        batch: list[_Task] = []
        for task in tasks:
            batch.append(task)
            if len(batch) == BATCH:
                pending.append(pool.submit(_hash_batch, batch))
                batch = []
            if len(pending) > workers * 4:
                yield pending.popleft().result()
        if batch:
            pending.append(pool.submit(_hash_batch, batch))
        while pending:
            yield pending.popleft().result()


def _hash_batch(batch: list[_Task]) -> list[_Hashed]:
    return [_hash_one(task) for task in batch]


def _hash_one(task: _Task) -> _Hashed:
    try:
        fd = os.open(task.path, _OPEN_FLAGS)
    except OSError as exc:
        return _Hashed(task, None, None, error=exc.strerror or str(exc))
    try:
        before = os.fstat(fd)
        if not task.maybe and os.pread(fd, 2, 0) != b"#!":
            return _Hashed(task, None, None)
        digest = hash_fd(fd, want_md5=bool(task.recorded_md5s))
        after = os.fstat(fd)
    except OSError as exc:
        return _Hashed(task, None, None, error=exc.strerror or str(exc))
    finally:
        os.close(fd)
    ident = identity_of(after)
    if ident != identity_of(before):
        return _Hashed(task, None, None, error="changed while it was read; run again")
    matches = digest.md5 is not None and digest.md5 in task.recorded_md5s
    source = Source.PACKAGE if matches else Source.INVENTORY
    entry = TrustEntry(task.path, digest.sha256, digest.size, after.st_mode & PERMISSION_BITS,
                       source, task.package if matches else None)
    return _Hashed(task, entry, ident, md5=digest.md5)


def _account(hashed: _Hashed, report: InventoryReport,
             found: list[tuple[TrustEntry, FileIdentity | None]]) -> None:
    if hashed.error is not None:
        report.errors.append((hashed.task.path, hashed.error))
        return
    entry = hashed.entry
    if entry is None:
        return
    report.hashed += 1
    report.bytes += entry.size
    report.recorded[entry.source.value] = report.recorded.get(entry.source.value, 0) + 1
    if hashed.task.recorded_md5s and entry.source is not Source.PACKAGE:
        report.package_mismatches.append(entry.path)
    found.append((entry, hashed.identity))


def package_entries(packages: PackageDatabase, name: str,
                    ) -> tuple[list[tuple[TrustEntry, FileIdentity | None]], list[str]]:
    """The regular files of package ``name`` that match dpkg's MD5, as ``package`` entries,
    and the paths that do not match (or cannot be read): those are not trusted."""
    trusted: list[tuple[TrustEntry, FileIdentity | None]] = []
    refused: list[str] = []
    for recorded, md5 in sorted(packages.md5sums(name).items()):
        path = resolved_dir(recorded)
        hashed = _hash_one(_Task(path, True, frozenset({md5}), name))
        if hashed.error is not None and not os.path.lexists(path):
            continue  # a file the package no longer has on disk (removed by the admin)
        if hashed.entry is None or hashed.entry.source is not Source.PACKAGE:
            refused.append(path)
        else:
            trusted.append((hashed.entry, hashed.identity))
    return trusted, refused


def resolved_dir(path: str) -> str:
    """``path`` with its directories resolved (``/bin/ls`` -> ``/usr/bin/ls`` on merged
    /usr), as the kernel names an executed file; the last component is left as it is."""
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail)


def file_entry(path: Path, source: Source) -> tuple[TrustEntry, FileIdentity]:
    """A trust entry for the file at ``path`` (resolved, as the kernel names it when run)."""
    hashed = _hash_one(_Task(os.path.realpath(path), True, frozenset(), None))
    if hashed.entry is None or hashed.identity is None:
        raise UsageError(f"{path}: {hashed.error or 'not a regular file'}; name a file to allow")
    entry = hashed.entry
    return TrustEntry(entry.path, entry.sha256, entry.size, entry.mode, source), hashed.identity
