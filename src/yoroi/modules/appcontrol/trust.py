"""The trust database: which files may run, and the fast judgement of one execution.

What is trusted (:class:`~yoroi.modules.appcontrol.types.Source`):

- **entries by path**: a file at a path with a SHA-256 and permission bits, recorded by the
  inventory (``inventory``, or ``package`` when dpkg's MD5 matched), by ``yoroi appcontrol
  allow`` (``hash``) or by a maintenance run (``maintenance``);
- **hashes**: content trusted anywhere (``allow --hash``, ``allow PATH``, policy ``{hash: ..}``);
- **locations**: policy ``{path: glob}`` rules trust whatever is at a matching path, unread.

A file at a path with an entry is trusted only when content *and* permission bits are those
recorded; a known content at a path with no entry was renamed or moved, and is *changed*, not
trusted ("changed in content, name, path or permissions since it was trusted").

:meth:`TrustDatabase.judge` runs on every exec the enforcer sees. Its hot path is one dict
lookup keyed by :class:`~yoroi.modules.appcontrol.types.FileIdentity` (device, inode, change
time, size): any write, chmod, chown, rename or link changes the change time, so a hit is the
same file, unchanged, at the same path (the path and mode are compared too, for free). A miss
reads the file through the descriptor it is given, never by path, since a fanotify permission
handler that opens a watched file would wait on itself. The cache is seeded with the
identities the inventory saw, so the first exec after turning the module on is a hit too.

Storage: ``<state>/appcontrol/trust.msgpack``, written whole and atomically. Policy rules are
not stored: the module sets them with :meth:`set_rules`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from yoroi.errors import PlatformError
from yoroi.modules.appcontrol.inventory import PERMISSION_BITS, hash_fd, identity_of
from yoroi.modules.appcontrol.types import Decision, FileIdentity, Reason, Source, TrustEntry

TRUST_FILE = "trust.msgpack"
FORMAT_VERSION = 1
CACHE_LIMIT = 262_144
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Decision.rule for Reason.CHANGED: what differs from the trusted file.
CHANGED_CONTENT, CHANGED_PERMISSIONS, CHANGED_PATH = "content", "permissions", "path"
UNREADABLE = "unreadable"


class _Record(msgspec.Struct, array_like=True, frozen=True):
    path: str
    sha256: str
    size: int
    mode: int
    source: str
    package: str | None
    identity: tuple[int, int, int, int] | None


class _Payload(msgspec.Struct):
    version: int
    entries: list[_Record]
    hashes: list[str]
    inventory_time: float | None = None
    inventory_dirs: list[str] = []


@dataclass(frozen=True)
class RuleSet:
    """The policy's explicit rules: hashes trusted anywhere, path globs, package names."""

    hashes: frozenset[str] = frozenset()
    paths: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()

    def location_matcher(self) -> re.Pattern[str] | None:
        """One regex for every path glob (``*`` crosses ``/``), or None without any."""
        if not self.paths:
            return None
        return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in self.paths))


@dataclass
class JudgeCounters:
    """How judgements went since the database was opened."""

    hits: int = 0
    misses: int = 0
    bytes_hashed: int = 0


@dataclass
class _Index:
    """Everything judge reads, swapped whole on reload."""

    by_path: dict[str, TrustEntry] = field(default_factory=dict)
    identities: dict[str, FileIdentity] = field(default_factory=dict)
    paths_of_hash: dict[str, set[str]] = field(default_factory=dict)
    hashes: set[str] = field(default_factory=set)
    inventory_time: float | None = None
    inventory_dirs: list[str] = field(default_factory=list)


class TrustDatabase:
    """The trusted files of this host, their identity cache, and the verdict on one exec."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.counters = JudgeCounters()
        self._lock = threading.Lock()
        self._rules = RuleSet()
        self._locations: re.Pattern[str] | None = None
        self._cache: dict[FileIdentity, tuple[str, int, Decision]] = {}
        self._index = _Index()
        self._stamp: tuple[int, int] | None = None
        self.reload()

    @classmethod
    def at_state(cls, state_dir: Path) -> TrustDatabase:
        """The database in ``<state_dir>/appcontrol``."""
        return cls(Path(state_dir) / "appcontrol" / TRUST_FILE)

    # --- the hot path -----------------------------------------------------------------

    def judge(self, path: str, fd: int | None, identity: FileIdentity,
              mode_bits: int) -> Decision:
        """Whether the file executed (or loaded) at ``path`` is trusted.

        ``fd`` is the open file (the fanotify event's descriptor); it is only read on a cache
        miss, with ``pread``. With ``fd`` None the path is opened instead: only for callers
        outside a permission handler. ``identity`` is the ``fstat`` of that file, ``mode_bits``
        its ``st_mode``. ``allow`` is True only when trusted; the enforcer applies the mode.
        """
        cached = self._cache.get(identity)
        if cached is not None and cached[0] == path and cached[1] == mode_bits & PERMISSION_BITS:
            self.counters.hits += 1
            return cached[2]
        return self._judge_miss(path, fd, identity, mode_bits & PERMISSION_BITS)

    def _judge_miss(self, path: str, fd: int | None, identity: FileIdentity,
                    mode: int) -> Decision:
        self.counters.misses += 1
        locations = self._locations
        if locations is not None and locations.fullmatch(path):
            decision = Decision(True, Reason.TRUSTED, path, None, f"{Source.PATH}")
            self._remember(identity, path, mode, decision)
            return decision
        own = fd is None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC) \
                if fd is None else fd
            digest = hash_fd(fd)
            unchanged = identity_of(os.fstat(fd)) == identity
        except OSError:
            return Decision(False, Reason.UNKNOWN, path, None, UNREADABLE)
        finally:
            if own and fd is not None:
                os.close(fd)
        self.counters.bytes_hashed += digest.size
        decision = self.verdict(path, digest.sha256, mode)
        if unchanged:
            self._remember(identity, path, mode, decision)
        return decision

    def verdict(self, path: str, sha256: str, mode_bits: int) -> Decision:
        """The judgement of content ``sha256`` with ``mode_bits`` at ``path`` (no cache)."""
        index, mode = self._index, mode_bits & PERMISSION_BITS
        if sha256 in index.hashes or sha256 in self._rules.hashes:
            return Decision(True, Reason.TRUSTED, path, sha256, f"{Source.HASH}")
        entry = index.by_path.get(path)
        if entry is not None:
            if entry.sha256 != sha256:
                return Decision(False, Reason.CHANGED, path, sha256, CHANGED_CONTENT)
            if entry.mode != mode:
                return Decision(False, Reason.CHANGED, path, sha256, CHANGED_PERMISSIONS)
            return Decision(True, Reason.TRUSTED, path, sha256, _rule_of(entry))
        if sha256 in index.paths_of_hash:
            return Decision(False, Reason.CHANGED, path, sha256, CHANGED_PATH)
        return Decision(False, Reason.UNKNOWN, path, sha256, None)

    def _remember(self, identity: FileIdentity, path: str, mode: int, decision: Decision) -> None:
        if len(self._cache) >= CACHE_LIMIT:
            self._cache = self._seeded(self._index)
        self._cache[identity] = (path, mode, decision)

    # --- reading ----------------------------------------------------------------------

    def entry(self, path: str) -> TrustEntry | None:
        """The entry recorded for ``path``."""
        return self._index.by_path.get(path)

    def entries(self) -> list[TrustEntry]:
        """Every entry, by path."""
        return [self._index.by_path[p] for p in sorted(self._index.by_path)]

    def identity(self, path: str) -> FileIdentity | None:
        """The identity the file at ``path`` had when it was trusted (if it was seen)."""
        return self._index.identities.get(path)

    def trusted_hashes(self) -> frozenset[str]:
        """Hashes trusted anywhere by ``allow`` (the policy's come on top)."""
        return frozenset(self._index.hashes)

    def counts(self) -> dict[str, int]:
        """Entries by source, and ``hashes``: contents trusted anywhere."""
        counts = {source.value: 0 for source in Source}
        for entry in self._index.by_path.values():
            counts[entry.source.value] += 1
        return {**counts, "hashes": len(self._index.hashes)}

    @property
    def inventory_time(self) -> float | None:
        """When the last inventory finished (epoch seconds), if ever."""
        return self._index.inventory_time

    @property
    def inventory_dirs(self) -> list[str]:
        """The directories the last inventory walked."""
        return list(self._index.inventory_dirs)

    # --- changing ---------------------------------------------------------------------

    def set_rules(self, rules: RuleSet) -> None:
        """Take the policy's rules (kept in memory only); forgets cached judgements."""
        with self._lock:
            self._rules = rules
            self._locations = rules.location_matcher()
            self._cache = self._seeded(self._index)

    def clear_cache(self) -> None:
        """Forget every cached judgement, the inventory's seeds too (each file is read again)."""
        self._cache = {}

    def add(self, entries: Iterable[tuple[TrustEntry, FileIdentity | None]]) -> int:
        """Record entries (replacing those at the same paths); call :meth:`save` to keep them."""
        with self._lock:
            index = _copy(self._index)
            count = 0
            for entry, ident in entries:
                _put(index, entry, ident)
                count += 1
            self._install(index)
        return count

    def trust_hash(self, sha256: str) -> None:
        """Trust a content anywhere."""
        if not SHA256.match(sha256):
            raise ValueError(f"{sha256!r} is not a SHA-256 (64 lower-case hex digits)")
        with self._lock:
            index = _copy(self._index)
            index.hashes.add(sha256)
            self._install(index)

    def replace_inventory(self, dirs: Iterable[str],
                          found: Iterable[tuple[TrustEntry, FileIdentity | None]]) -> None:
        """Make ``found`` the inventory of ``dirs``: inventory and package entries below them
        that were not found again are dropped; explicit and maintenance entries stay."""
        roots = [d.rstrip("/") + "/" for d in dirs]
        replaced = (Source.INVENTORY, Source.PACKAGE)
        with self._lock:
            index = _copy(self._index)
            for path, entry in list(index.by_path.items()):
                if entry.source in replaced and path.startswith(tuple(roots)):
                    _drop(index, path)
            for entry, ident in found:
                _put(index, entry, ident)
            index.inventory_time = time.time()
            index.inventory_dirs = sorted(set(index.inventory_dirs) | {r[:-1] or "/"
                                                                       for r in roots})
            self._install(index)

    def _install(self, index: _Index) -> None:
        self._cache = self._seeded(index)
        self._index = index

    def _seeded(self, index: _Index) -> dict[FileIdentity, tuple[str, int, Decision]]:
        cache = {}
        for path, ident in index.identities.items():
            entry = index.by_path[path]
            decision = Decision(True, Reason.TRUSTED, path, entry.sha256, _rule_of(entry))
            cache[ident] = (path, entry.mode, decision)
        return cache

    # --- storage ----------------------------------------------------------------------

    def save(self) -> None:
        """Write the database atomically (a crash leaves the previous one whole)."""
        index = self._index
        records = [_to_record(e, index.identities.get(p)) for p, e in sorted(index.by_path.items())]
        payload = _Payload(FORMAT_VERSION, records, sorted(index.hashes), index.inventory_time,
                           index.inventory_dirs)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as out:
                out.write(msgspec.msgpack.encode(payload))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise PlatformError(f"cannot write the trust database {self.path}: {exc}") from exc
        _fsync_dir(self.path.parent)
        self._stamp = _stamp(self.path)

    def reload(self) -> None:
        """Read the database from disk (empty when there is none yet)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            self._stamp = None
            with self._lock:
                self._install(_Index())
            return
        except OSError as exc:
            raise PlatformError(f"cannot read the trust database {self.path}: {exc}") from exc
        index = _decode(blob, self.path)
        with self._lock:
            self._install(index)
        self._stamp = _stamp(self.path)

    def reload_if_changed(self) -> bool:
        """Reload when another process (``yoroi appcontrol allow``) rewrote the file."""
        if _stamp(self.path) == self._stamp:
            return False
        self.reload()
        return True


def _decode(blob: bytes, path: Path) -> _Index:
    try:
        payload = msgspec.msgpack.decode(blob, type=_Payload)
    except msgspec.DecodeError as exc:
        raise PlatformError(f"{path}: not a trust database ({exc}); move it away and run "
                            "'yoroi appcontrol inventory' again") from None
    if payload.version != FORMAT_VERSION:
        raise PlatformError(f"{path}: trust database format {payload.version}, this Yoroi "
                            f"reads {FORMAT_VERSION}; run 'yoroi appcontrol inventory' again")
    index = _Index(hashes=set(payload.hashes), inventory_time=payload.inventory_time,
                   inventory_dirs=list(payload.inventory_dirs))
    for r in payload.entries:
        entry = TrustEntry(r.path, r.sha256, r.size, r.mode, Source(r.source), r.package)
        _put(index, entry, FileIdentity(*r.identity) if r.identity else None)
    return index


def _to_record(entry: TrustEntry, identity: FileIdentity | None) -> _Record:
    ident = (identity.dev, identity.ino, identity.ctime_ns, identity.size) if identity else None
    return _Record(entry.path, entry.sha256, entry.size, entry.mode, entry.source.value,
                   entry.package, ident)


def _copy(index: _Index) -> _Index:
    return _Index(dict(index.by_path), dict(index.identities),
                  {h: set(p) for h, p in index.paths_of_hash.items()}, set(index.hashes),
                  index.inventory_time, list(index.inventory_dirs))


def _put(index: _Index, entry: TrustEntry, identity: FileIdentity | None) -> None:
    _drop(index, entry.path)
    index.by_path[entry.path] = entry
    index.paths_of_hash.setdefault(entry.sha256, set()).add(entry.path)
    if identity is not None:
        index.identities[entry.path] = identity


def _drop(index: _Index, path: str) -> None:
    old = index.by_path.pop(path, None)
    index.identities.pop(path, None)
    if old is not None:
        paths = index.paths_of_hash.get(old.sha256, set())
        paths.discard(path)
        if not paths:
            index.paths_of_hash.pop(old.sha256, None)


def _rule_of(entry: TrustEntry) -> str:
    return f"{entry.source}:{entry.package}" if entry.package else f"{entry.source}"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
