"""Copies of files taken before an untrusted process first changes them, and their restore.

:class:`BackupStore` keeps one copy per file *version* -- a version is ``(dev, ino, size,
mtime_ns, ctime_ns)`` -- together with its metadata (mode, owner, atime/mtime, small xattrs).
Each copy is *claimed* by the processes (pids) whose access caused it: ``records_for(pids)``
finds the copies of a process family, ``release(pids)`` drops the claims of processes judged
honest (a copy nobody claims any more is deleted), ``expire(predicate)`` drops copies outright.

Layout under ``root`` (0700, files 0600): ``index.sqlite3`` (copies, and (copy, pid) claims),
``blobs/<id>`` (content).

A file an untrusted process only *reads* is not copied but held (:meth:`BackupStore.hold`, see
:mod:`yoroi.modules.behavior.holds`): its copy is taken from the held descriptor only when
``records_for`` asks for that process, or when the hold is evicted after the file was unlinked.

Content is read from a descriptor the caller hands over (the fanotify event's own descriptor:
see :mod:`yoroi.modules.behavior.prewrite`), never by opening the original path. A copy over
``max_file_size``, or one that would take the store over ``budget_bytes``, is refused: ``keep``
then returns a :class:`Refusal` and publishes nothing itself -- the caller turns it into an
event. Copies are not fsync'ed and the index runs in WAL mode with ``synchronous=NORMAL`` (speed
matters more while a process waits on us: a commit then costs no sync); after a crash the index
may name a blob that is shorter than recorded, which ``restore`` reports as failed.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from yoroi.modules.behavior.holds import Held, Holds

Version = tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns
_XATTR_LIMIT = 64 * 1024  # bytes of xattrs kept per file; beyond it none are (not cheap)
_CHUNK = 1 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS copies (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, atime_ns INTEGER, mode INTEGER, uid INTEGER,
    gid INTEGER, xattrs TEXT, created REAL, UNIQUE (dev, ino, size, mtime_ns, ctime_ns));
CREATE TABLE IF NOT EXISTS claims (
    copy_id TEXT NOT NULL REFERENCES copies(id) ON DELETE CASCADE, pid INTEGER NOT NULL,
    PRIMARY KEY (copy_id, pid));
"""


class RefusalReason(enum.StrEnum):
    """Why no copy was kept."""

    SIZE_CAP = "size_cap"  # the file is larger than max_file_size
    BUDGET = "budget"  # the copy would exceed budget_bytes
    NOT_REGULAR = "not_regular"  # directories, devices, fifos are not copied
    CHANGED = "changed"  # the file changed while it was copied (the copy is discarded)
    ERROR = "error"  # an I/O error (detail says which)


@dataclass(frozen=True)
class Refusal:
    """A copy that was not kept; the caller publishes it (e.g. a "budget exceeded" event)."""

    reason: RefusalReason
    path: str
    pid: int
    size: int
    detail: str = ""


@dataclass(frozen=True)
class BackupRecord:
    """One kept copy: the original's path, version and metadata, and where its content is."""

    id: str
    path: str
    version: Version
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    created: float  # time.time() when the copy was taken
    xattrs: dict[str, bytes] = field(default_factory=dict, compare=False)
    pids: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        """Bytes of content."""
        return self.version[2]


@dataclass(frozen=True)
class RestoreReport:
    """What ``restore_all`` did: restored paths, and failed paths with the reason."""

    restored: tuple[str, ...]
    failed: dict[str, str]

    @property
    def ok(self) -> bool:
        """True when every path was restored."""
        return not self.failed


class BackupStore:
    """Copies of original file content, deduplicated by version, claimed by pids.

    Thread-safe: ``keep`` may run in several worker threads at once (two requests for the same
    version copy it once; the second waits and shares the copy).
    """

    def __init__(
        self, root: Path, *, max_file_size: int, budget_bytes: int, hold_limit: int = 1024
    ) -> None:
        self.root = Path(root)
        self.max_file_size = max_file_size
        self.budget_bytes = budget_bytes
        self._blobs = self.root / "blobs"
        old_umask = os.umask(0o077)
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            self._db = sqlite3.connect(self.root / "index.sqlite3", check_same_thread=False)
        finally:
            os.umask(old_umask)
        os.chmod(self.root / "index.sqlite3", 0o600)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        self._cond = threading.Condition()
        self._in_flight: dict[Version, int] = {}  # version -> bytes reserved in the budget
        self._used = self._scan_usage()
        self.holds = Holds(hold_limit)

    @property
    def blob_dir(self) -> Path:
        """The directory holding copied content (the monitor hides it from its own marks)."""
        return self._blobs

    def keep(self, path: str, fd: int, pid: int) -> BackupRecord | Refusal:
        """Copy the content behind ``fd`` (the file at ``path``) unless this version is kept.

        The read never moves ``fd``'s offset. Returns the record (new, or the existing copy of
        this version, now also claimed by ``pid``) or a :class:`Refusal`.
        """
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Refusal(RefusalReason.NOT_REGULAR, path, pid, 0)
        return self._keep(path, fd, pid, info, None)

    def hold(self, path: str, fd: int, pid: int, info: os.stat_result) -> list[Held]:
        """``pid`` read ``path`` (``fd``, ``info``: the file now): hold it instead of a copy.

        Returns evicted holds of unlinked files: pass each to :meth:`keep_held` (it may copy,
        so not from a thread that answers permission events).
        """
        return self.holds.add(path, fd, pid, info)

    def keep_held(self, held: Held) -> BackupRecord | Refusal | None:
        """Copy (or claim the copy of) the content ``held`` was read at; closes its fd.

        None when the content changed since and no copy of it was kept.
        """
        try:
            now = os.fstat(held.fd)
            if (now.st_size, now.st_mtime_ns) == (held.info.st_size, held.info.st_mtime_ns):
                return self._keep(held.path, held.fd, held.pid, held.info, held.since)
            with self._cond:
                return self._claim(_version(held.info), held.pid)
        finally:
            os.close(held.fd)

    def _keep(
        self, path: str, fd: int, pid: int, info: os.stat_result, since: float | None
    ) -> BackupRecord | Refusal:
        version = _version(info)
        with self._cond:
            while version in self._in_flight:
                self._cond.wait()
            existing = self._claim(version, pid)
            if existing is not None:
                return existing
            refusal = self._check_room(path, pid, info.st_size)
            if refusal is not None:
                return refusal
            self._in_flight[version] = info.st_size
        try:
            return self._copy(path, fd, pid, info, since)
        finally:
            with self._cond:
                del self._in_flight[version]
                self._cond.notify_all()

    def records_for(self, pids: int | Iterable[int]) -> list[BackupRecord]:
        """Copies claimed by any of ``pids`` (a pid or a process family), oldest first.

        Their held reads are copied first (see :meth:`hold`).
        """
        wanted, marks = _pid_list(pids)
        for held in self.holds.take(wanted):
            self.keep_held(held)
        with self._cond:
            query = f"SELECT DISTINCT copy_id FROM claims WHERE pid IN ({marks})"
            rows = self._db.execute(query, wanted).fetchall()
            records = [self._load(row[0]) for row in rows]
        return sorted((r for r in records if r is not None), key=lambda r: r.created)

    def records(self) -> list[BackupRecord]:
        """Every copy, oldest first."""
        with self._cond:
            rows = self._db.execute("SELECT id FROM copies ORDER BY created").fetchall()
            return [r for r in map(self._load, (row[0] for row in rows)) if r is not None]

    def restore(self, record: BackupRecord, *, to: Path | None = None) -> Path:
        """Put ``record``'s content and metadata back at its path (or ``to``), atomically.

        Missing parent directories are recreated (0755, owned by the original file's owner).
        Raises ``OSError`` when it cannot (the file's place is a directory, the copy is short).
        """
        target = Path(to) if to is not None else Path(record.path)
        _make_parents(target.parent, record.uid, record.gid)
        temp = target.parent / f".{target.name}.yoroi-restore-{secrets.token_hex(4)}"
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self._write_back(record, out)
            os.rename(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        finally:
            os.close(out)
        return target

    def restore_all(self, records: Iterable[BackupRecord]) -> RestoreReport:
        """Restore each path from its oldest copy among ``records`` (the original content)."""
        oldest: dict[str, BackupRecord] = {}
        for record in sorted(records, key=lambda r: r.created):
            oldest.setdefault(record.path, record)
        restored: list[str] = []
        failed: dict[str, str] = {}
        for path, record in oldest.items():
            try:
                self.restore(record)
            except OSError as exc:
                failed[path] = exc.strerror or str(exc)
            else:
                restored.append(path)
        return RestoreReport(tuple(restored), failed)

    def release(self, pids: int | Iterable[int]) -> int:
        """Drop the claims of ``pids``; delete copies nobody claims any more. Returns how many."""
        wanted, marks = _pid_list(pids)
        self.holds.drop(wanted)
        with self._cond:
            self._db.execute(f"DELETE FROM claims WHERE pid IN ({marks})", wanted)
            rows = self._db.execute(
                "SELECT id FROM copies WHERE id NOT IN (SELECT copy_id FROM claims)"
            ).fetchall()
            return self._delete([row[0] for row in rows])

    def expire(self, predicate: Callable[[BackupRecord], bool]) -> int:
        """Delete every copy for which ``predicate(record)`` is true. Returns how many."""
        doomed = [record.id for record in self.records() if predicate(record)]
        with self._cond:
            return self._delete(doomed)

    def usage(self) -> int:
        """Bytes of content kept (copies in progress included)."""
        with self._cond:
            return self._used + sum(self._in_flight.values())

    def close(self) -> None:
        """Close the held descriptors and the index."""
        self.holds.close()
        with self._cond:
            self._db.close()

    def _claim(self, version: Version, pid: int) -> BackupRecord | None:
        row = self._db.execute(
            "SELECT id FROM copies WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND ctime_ns=?",
            version,
        ).fetchone()
        if row is None:
            return None
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)", (row[0], pid))
        return self._load(row[0])

    def _check_room(self, path: str, pid: int, size: int) -> Refusal | None:
        if size > self.max_file_size:
            detail = f"{size} bytes > max_file_size {self.max_file_size}"
            return Refusal(RefusalReason.SIZE_CAP, path, pid, size, detail)
        used = self._used + sum(self._in_flight.values())
        if used + size > self.budget_bytes:
            detail = f"{used} + {size} bytes > budget {self.budget_bytes}"
            return Refusal(RefusalReason.BUDGET, path, pid, size, detail)
        return None

    def _copy(
        self, path: str, fd: int, pid: int, info: os.stat_result, since: float | None
    ) -> BackupRecord | Refusal:
        """Copy ``fd`` as version ``info``; a held file (``since``) may be unlinked since."""
        copy_id = f"{int(time.time() * 1000):x}-{secrets.token_hex(6)}"
        blob = self._blobs / copy_id
        try:
            _copy_content(fd, blob, info.st_size)
            after = os.fstat(fd)
            xattrs = _read_xattrs(fd)
        except OSError as exc:
            blob.unlink(missing_ok=True)
            return Refusal(RefusalReason.ERROR, path, pid, info.st_size, str(exc))
        same = _version if since is None else _content_version
        if same(after) != same(info):
            blob.unlink(missing_ok=True)
            return Refusal(RefusalReason.CHANGED, path, pid, info.st_size, "changed while copied")
        record = BackupRecord(
            id=copy_id, path=path, version=_version(info), mode=stat.S_IMODE(info.st_mode),
            uid=info.st_uid, gid=info.st_gid, atime_ns=info.st_atime_ns,
            mtime_ns=info.st_mtime_ns, created=since or time.time(), xattrs=xattrs,
            pids=frozenset({pid}),
        )
        with self._cond:
            self._insert(record)
            self._used += info.st_size
        return record

    def _insert(self, r: BackupRecord) -> None:
        xattrs = json.dumps({k: v.hex() for k, v in r.xattrs.items()})
        with self._db:
            self._db.execute(
                "INSERT INTO copies VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.id, r.path, *r.version, r.atime_ns, r.mode, r.uid, r.gid, xattrs, r.created),
            )
            self._db.executemany("INSERT INTO claims VALUES (?, ?)", [(r.id, p) for p in r.pids])

    def _load(self, copy_id: str) -> BackupRecord | None:
        row = self._db.execute("SELECT * FROM copies WHERE id=?", (copy_id,)).fetchone()
        if row is None:
            return None
        pids = self._db.execute("SELECT pid FROM claims WHERE copy_id=?", (copy_id,)).fetchall()
        cid, path, *version, atime_ns, mode, uid, gid, xattrs, created = row
        return BackupRecord(
            cid, path, tuple(version), mode, uid, gid, atime_ns, version[3], created,
            xattrs={k: bytes.fromhex(v) for k, v in json.loads(xattrs).items()},
            pids=frozenset(p for (p,) in pids),
        )

    def _delete(self, ids: list[str]) -> int:
        deleted = 0
        for copy_id in ids:
            row = self._db.execute("SELECT size FROM copies WHERE id=?", (copy_id,)).fetchone()
            if row is None:
                continue
            with self._db:  # the claims go with it (ON DELETE CASCADE)
                self._db.execute("DELETE FROM copies WHERE id=?", (copy_id,))
            (self._blobs / copy_id).unlink(missing_ok=True)
            self._used -= row[0]
            deleted += 1
        return deleted

    def _write_back(self, record: BackupRecord, out: int) -> None:
        blob = os.open(self._blobs / record.id, os.O_RDONLY | os.O_CLOEXEC)
        try:
            copied = _sendfile_all(out, blob, record.size)
        finally:
            os.close(blob)
        if copied != record.size:
            raise OSError(errno.EIO, f"the copy of {record.path} is short ({copied} bytes)")
        for name, value in record.xattrs.items():
            with contextlib.suppress(OSError):  # a file system without that namespace
                os.setxattr(out, name, value)
        os.fchown(out, record.uid, record.gid)
        os.fchmod(out, record.mode)
        os.utime(out, ns=(record.atime_ns, record.mtime_ns))

    def _scan_usage(self) -> int:
        for leftover in self._blobs.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM copies").fetchone()
        return int(row[0])


def _version(info: os.stat_result) -> Version:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _content_version(info: os.stat_result) -> tuple[int, ...]:
    """What an unlink leaves alone (it changes ctime and the link count)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _pid_list(pids: int | Iterable[int]) -> tuple[list[int], str]:
    """The pids, and the SQL placeholders for them."""
    wanted = [pids] if isinstance(pids, int) else list(pids)
    return wanted, ",".join("?" * len(wanted))


def _copy_content(fd: int, blob: Path, size: int) -> None:
    temp = blob.with_name(blob.name + ".tmp")
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        copied = _sendfile_all(out, fd, size)
        if copied != size:
            raise OSError(errno.EIO, f"read {copied} of {size} bytes")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(out)
    os.rename(temp, blob)


def _sendfile_all(out: int, src: int, size: int) -> int:
    """Copy up to ``size`` bytes from offset 0 of ``src`` (its offset untouched) to ``out``."""
    offset = 0
    while offset < size:
        sent = os.sendfile(out, src, offset, min(_CHUNK, size - offset))
        if sent == 0:
            break
        offset += sent
    return offset


def _read_xattrs(fd: int) -> dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    found: dict[str, bytes] = {}
    total = 0
    for name in names:
        with contextlib.suppress(OSError):
            found[name] = os.getxattr(fd, name)
            total += len(name) + len(found[name])
        if total > _XATTR_LIMIT:
            return {}
    return found


def _make_parents(directory: Path, uid: int, gid: int) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
        with contextlib.suppress(OSError):
            os.chown(path, uid, gid)
