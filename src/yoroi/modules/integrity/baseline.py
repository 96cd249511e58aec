"""File baselines: what each covered file looks like now, recorded fast, stored signed.

:func:`scan` walks the rules and records one :class:`FileState` per path. Hashing is parallel:
with ``jobs`` > 1 a pool of forked processes takes batches of paths (each opens, fstats, reads
xattrs and hashes), while a thread of the parent walks the trees and feeds them; hashlib
releases the GIL only for large buffers, and most files are small, so processes beat threads
here (measured in docs/integrity.md).

What is recorded depends on the type: directories keep no size, mtime or link count (they change
whenever an entry is added or removed, which is reported on the entry itself); symbolic links
keep no size, mode or mtime (the target says it all). ``ctime`` is recorded but never reported.

The store is ``<state>/integrity/baseline.msgpack``: msgspec MessagePack, records as arrays,
wrapped by :mod:`~yoroi.modules.integrity.signing` and verified before it is decoded.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from yoroi.errors import BaselineTampered, PolicyError, UsageError
from yoroi.modules.antimalware.walker import pseudo_devices
from yoroi.modules.integrity.rules import Rule, walk
from yoroi.modules.integrity.signing import load_keys
from yoroi.modules.integrity.types import Attribute, FileState

BASELINE_FILE = "baseline.msgpack"
FORMAT_VERSION = 1
BATCH = 256
SMALL_FILE = 256 * 1024
CHUNK = 1 << 20
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFBLK: "block",
          stat.S_IFCHR: "char"}
_ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")
_CAPS_NAME = "security.capability"
_ACL_TAGS = {1: "u:", 2: "u:", 4: "g:", 8: "g:", 0x10: "m:", 0x20: "o:"}

Progress = Callable[[int], None]


class Record(msgspec.Struct, array_like=True, frozen=True):
    """A stored :class:`FileState` plus the index of its rule (compact on disk)."""

    path: str
    type: str
    size: int | None
    mode: int | None
    uid: int | None
    gid: int | None
    mtime_ns: int | None
    ctime_ns: int | None
    inode: int | None
    nlink: int | None
    sha256: str | None
    blake3: str | None
    link: str | None
    xattrs: tuple[tuple[str, str], ...] | None
    acl: str | None
    caps: str | None
    rule: int


class _Payload(msgspec.Struct):
    version: int
    created: float
    skip_hash_if_unchanged: bool
    rules: list[Rule]
    records: list[Record]


@dataclass
class Baseline:
    """The recorded states, by path, and the rules that recorded them."""

    rules: tuple[Rule, ...]
    states: dict[str, FileState]
    rule_of: dict[str, int]
    created: float = field(default_factory=time.time)
    skip_hash_if_unchanged: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)

    def rule_for(self, path: str) -> Rule:
        """The rule that covers ``path``."""
        return self.rules[self.rule_of[path]]


# --- recording one file --------------------------------------------------------------------

def record(path: str, rule: Rule, reuse: FileState | None = None) -> FileState | None:
    """The state of ``path`` as ``rule`` records it; None when it vanished meanwhile.

    ``reuse``: a previous state whose hash may stand if size, mtime, ctime and inode match.
    """
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode) and rule.hash_attribute is not None:
        if reuse is not None and _same_version(info, reuse):
            return _state(path, info, rule, xattrs=_xattrs(path), digest=_digest_of(reuse, rule))
        return _record_file(path, rule)
    link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    return _state(path, info, rule, xattrs=_xattrs(path), link=link)


def _record_file(path: str, rule: Rule) -> FileState:
    fd = _open(path)
    try:
        info = os.fstat(fd)
        digest = _hash_fd(fd, rule.hash, info.st_size) if stat.S_ISREG(info.st_mode) else None
        return _state(path, info, rule, xattrs=_xattrs(fd), digest=digest)
    finally:
        os.close(fd)


def _open(path: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
        return os.open(path, flags)


def _hash_fd(fd: int, algorithm: str, size: int) -> str:
    digest = _hasher(algorithm)
    if size <= SMALL_FILE:  # reads of the file's size: no 1 MiB buffer per small file
        while data := os.read(fd, max(size, 4096)):
            digest.update(data)
    else:
        view = memoryview(bytearray(CHUNK))
        while count := os.readv(fd, [view]):
            digest.update(view[:count])
    return str(digest.hexdigest())


def _hasher(algorithm: str) -> Any:
    if algorithm == "blake3":
        try:
            import blake3  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise PolicyError("hash: blake3 needs the blake3 package (pip install blake3)"
                              ) from None
        return blake3.blake3()
    return hashlib.sha256() if algorithm == "sha256" else hashlib.new(algorithm)


def _same_version(info: os.stat_result, old: FileState) -> bool:
    return (old.type == "file" and info.st_size == old.size and info.st_mtime_ns == old.mtime_ns
            and info.st_ctime_ns == old.ctime_ns and info.st_ino == old.inode)


def _digest_of(state: FileState, rule: Rule) -> str | None:
    return state.blake3 if rule.hash == "blake3" else state.sha256


def _state(path: str, info: os.stat_result, rule: Rule, xattrs: dict[str, bytes],
           digest: str | None = None, link: str | None = None) -> FileState:
    want = rule.attributes
    kind = _TYPES.get(stat.S_IFMT(info.st_mode), "unknown")
    plain = kind not in ("dir", "symlink")

    def pick(attribute: Attribute, value: Any, applies: bool = True) -> Any:
        return value if applies and attribute in want else None

    return FileState(
        path=path, type=kind,
        size=pick(Attribute.SIZE, info.st_size, plain),
        mode=pick(Attribute.MODE, stat.S_IMODE(info.st_mode), kind != "symlink"),
        uid=pick(Attribute.UID, info.st_uid), gid=pick(Attribute.GID, info.st_gid),
        mtime_ns=pick(Attribute.MTIME, info.st_mtime_ns, plain),
        ctime_ns=info.st_ctime_ns, inode=pick(Attribute.INODE, info.st_ino),
        nlink=pick(Attribute.NLINK, info.st_nlink, kind != "dir"),
        sha256=digest if rule.hash == "sha256" and Attribute.SHA256 in want else None,
        blake3=digest if rule.hash == "blake3" and Attribute.BLAKE3 in want else None,
        link=pick(Attribute.LINK, link),
        xattrs=pick(Attribute.XATTRS, tuple(sorted(
            (k, v.hex()) for k, v in xattrs.items()
            if k not in _ACL_NAMES and k != _CAPS_NAME))),
        acl=pick(Attribute.ACL, _acl_text(xattrs)),
        caps=pick(Attribute.CAPS, xattrs[_CAPS_NAME].hex() if _CAPS_NAME in xattrs else ""),
    )


def _xattrs(target: str | int) -> dict[str, bytes]:
    try:
        names = os.listxattr(target, follow_symlinks=False) if isinstance(target, str) \
            else os.listxattr(target)
        if isinstance(target, str):
            return {n: os.getxattr(target, n, follow_symlinks=False) for n in names}
        return {n: os.getxattr(target, n) for n in names}
    except OSError:  # no xattr support on this file system, or the file vanished
        return {}


def _acl_text(xattrs: dict[str, bytes]) -> str:
    """POSIX ACLs as ``access:u::rw-,u:1000:r--,...;default:...`` ("" when none)."""
    parts = []
    for name in _ACL_NAMES:
        raw = xattrs.get(name)
        if raw is not None:
            parts.append(f"{name.rsplit('_', 1)[1]}:{_acl_entries(raw)}")
    return ";".join(parts)


def _acl_entries(raw: bytes) -> str:
    entries = []
    for offset in range(4, len(raw) - 7, 8):
        tag = int.from_bytes(raw[offset:offset + 2], "little")
        perm = int.from_bytes(raw[offset + 2:offset + 4], "little")
        ident = int.from_bytes(raw[offset + 4:offset + 8], "little")
        who = str(ident) if tag in (2, 8) else ""
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        entries.append(f"{_ACL_TAGS.get(tag, '?:')}{who}:{bits}")
    return ",".join(entries)


# --- recording many files in parallel -------------------------------------------------------

Task = tuple[str, int, FileState | None]
Outcome = tuple[str, int, FileState | None, str | None]  # path, rule, state, error
_worker_rules: tuple[Rule, ...] = ()


def _record_batch(batch: list[Task]) -> list[Outcome]:
    out: list[Outcome] = []
    for path, index, reuse in batch:
        try:
            out.append((path, index, record(path, _worker_rules[index], reuse), None))
        except FileNotFoundError:
            continue  # vanished between the walk and now
        except OSError as exc:
            out.append((path, index, None, exc.strerror or str(exc)))
    return out


def _init_worker(rules: tuple[Rule, ...]) -> None:
    global _worker_rules
    _worker_rules = rules


def record_paths(rules: tuple[Rule, ...], paths: Iterable[tuple[str, int]]) -> list[Outcome]:
    """Record ``(path, rule index)`` pairs here, serially (for a few paths)."""
    _init_worker(rules)
    return _record_batch([(p, i, None) for p, i in paths])


def scan(rules: tuple[Rule, ...], jobs: int = 1, previous: Baseline | None = None,
         progress: Progress | None = None) -> Baseline:
    """Record every path the rules cover; ``previous`` lends hashes of unchanged files."""
    reuse = previous.states if previous and previous.skip_hash_if_unchanged else {}
    tasks = ((p, i, reuse.get(p)) for p, i in walk(rules, pseudo_devices()))
    result = Baseline(rules, {}, {}, skip_hash_if_unchanged=bool(
        previous and previous.skip_hash_if_unchanged))
    for outcomes in _run(rules, _batches(tasks), jobs):
        for path, index, state, error in outcomes:
            if error is not None:
                result.errors.append((path, error))
            elif state is not None:
                result.states[path], result.rule_of[path] = state, index
        if progress is not None:
            progress(len(result.states))
    return result


def _batches(tasks: Iterable[Task]) -> Iterator[list[Task]]:
    batch: list[Task] = []
    for task in tasks:
        batch.append(task)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _run(rules: tuple[Rule, ...], batches: Iterator[list[Task]],
         jobs: int) -> Iterator[list[Outcome]]:
    if jobs <= 1:
        _init_worker(rules)
        yield from map(_record_batch, batches)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs, _init_worker, (rules,)) as pool:
        yield from pool.imap_unordered(_record_batch, batches)


def default_jobs() -> int:
    """All cores (the walk runs in a thread of the parent beside them)."""
    return len(os.sched_getaffinity(0)) or 1


# --- the signed store ---------------------------------------------------------------------

class BaselineStore:
    """The signed baseline file and its keys in ``<state>/integrity``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / BASELINE_FILE

    def exists(self) -> bool:
        """A baseline has been made here."""
        return self.path.exists()

    def save(self, baseline: Baseline) -> None:
        """Sign and write atomically (a crash leaves the old baseline whole)."""
        keys = load_keys(self.directory, create=True)
        records = [_to_record(s, baseline.rule_of[p])
                   for p, s in sorted(baseline.states.items())]
        payload = _Payload(FORMAT_VERSION, baseline.created, baseline.skip_hash_if_unchanged,
                           list(baseline.rules), records)
        blob = keys.sign(msgspec.msgpack.encode(payload))
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def load(self) -> Baseline:
        """The verified baseline; :class:`BaselineTampered` when it does not verify."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"no baseline at {self.path}; make one first with "
                             "'yoroi integrity baseline PATH...'") from None
        payload_bytes = load_keys(self.directory, create=False).open(blob, str(self.path))
        try:
            payload = msgspec.msgpack.decode(payload_bytes, type=_Payload)
        except msgspec.DecodeError as exc:  # signed yet unreadable: a newer or broken writer
            raise BaselineTampered(f"{self.path}: signed but unreadable: {exc}") from None
        states = {r.path: FileState(*msgspec.structs.astuple(r)[:-1]) for r in payload.records}
        rule_of = {r.path: r.rule for r in payload.records}
        return Baseline(tuple(payload.rules), states, rule_of, payload.created,
                        payload.skip_hash_if_unchanged)


def _to_record(s: FileState, rule: int) -> Record:
    return Record(s.path, s.type, s.size, s.mode, s.uid, s.gid, s.mtime_ns, s.ctime_ns, s.inode,
                  s.nlink, s.sha256, s.blake3, s.link, s.xattrs, s.acl, s.caps, rule)
