"""Who-data: which process, user and package transaction made a change.

:class:`WhoResolver` turns the pid of a fanotify event into an :class:`Actor`, right away in the
reader thread: the process (pid, exe, command line, user, login user) and its parent chain, plus
a :class:`Transaction` when the process or an ancestor is a package manager run (``dpkg``,
``apt``, ``apt-get``, ``aptitude``, ``unattended-upgrade``).

A small cache of processes is fed by the proc connector (when one is given): at an exec the
executable, argv and uid are read from /proc at once (the full snapshot through the
``Processes`` adapter follows on first use), a fork copies the parent's entry, an exit keeps the
entry for ``grace`` seconds, so that a process that wrote a file and exited before its event
was read is still known. On look-up, a cached live process is checked against
``/proc/PID/exe`` and read again when that changed (an exec not yet announced).

Limits, stated plainly:

- a process that exits (and is reaped) before its exec is handled -- tools like ``chmod`` or
  ``rm`` live about a millisecond -- keeps its parent chain but not its exe and argv; one
  whose fork was not seen either is known by its pid only (``Actor.source == "gone"``);
- a fork without exec is described by its parent's command line; a re-exec of the same
  executable with other arguments, not yet announced, keeps the old one; without a proc
  connector entries are trusted ``ttl`` seconds; pids are of the initial pid namespace.

Package transactions: :class:`TransactionHold` keeps their changes until the package manager
exits, then looks the owner of each path up in a *fresh* dpkg database (falling back to the one
of the transaction's first change, for files removed with their package); a change by a package
manager to a file its packages own (``foo.dpkg-new`` counts as ``foo``) is ``expected``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Generic, TypeVar

from yoroi.errors import PlatformError
from yoroi.platform.linux.dpkg import PackageDatabase
from yoroi.platform.linux.proc_connector import (
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcEvent,
    ProcEventSource,
    UidEvent,
)
from yoroi.platform.linux.process import ProcessesLike, ProcessInfo, user_name

__all__ = [
    "Actor", "ProcessRef", "Settled", "Transaction", "TransactionHold", "WhoResolver", "owned_name",
]

PACKAGE_MANAGERS = frozenset({"dpkg", "apt", "apt-get", "aptitude", "unattended-upgrade"})
FRONTENDS = PACKAGE_MANAGERS - {"dpkg"}
_INTERPRETERS = ("python", "perl", "sh", "bash", "dash")
_DPKG_SUFFIXES = (".dpkg-new", ".dpkg-tmp", ".dpkg-old", ".dpkg-dist", ".dpkg-bak", ".dpkg-remove")
_MAX_CHAIN = 32


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """One process as who-data reports it."""

    pid: int
    ppid: int | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    uid: int | None = None
    user: str | None = None
    loginuid: int | None = None
    login_user: str | None = None

    @classmethod
    def of(cls, info: ProcessInfo) -> ProcessRef:
        """The fields of a process snapshot that who-data keeps."""
        return cls(info.pid, info.ppid, info.exe, info.cmdline, info.uid, info.user,
                   info.loginuid, info.login_user)  # fmt: skip

    @property
    def program(self) -> str | None:
        """The program's name: the executable's, or the script's for an interpreter."""
        name = os.path.basename(self.exe or (self.cmdline[0] if self.cmdline else ""))
        if name.startswith(_INTERPRETERS):
            script = next((a for a in self.cmdline[1:] if not a.startswith("-")), None)
            if script:
                return os.path.basename(script)
        return name or None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A package manager run: ``dpkg``'s pid and the command line that started it."""

    manager: str  # the outermost package manager seen: "apt-get", "dpkg", ...
    dpkg_pid: int | None
    command: tuple[str, ...]  # the front end's command line, or dpkg's when run alone
    key: int  # the pid whose exit ends the transaction


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: the process, its ancestors (parent first), a package transaction."""

    process: ProcessRef
    chain: tuple[ProcessRef, ...] = ()
    source: str = "live"  # "live": read at event time; "cache": it had exited; "gone": pid only
    transaction: Transaction | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain fields (process, chain, source, transaction) for events and change records."""
        return asdict(self)


@dataclass(slots=True)
class _Entry:
    ref: ProcessRef
    stamp: float
    exited: float | None = None
    partial: bool = False  # only exe and argv read at exec: read in full on first use


def _proc_exe(pid: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return target.removesuffix(" (deleted)")


def _proc_image(pid: int) -> tuple[str, tuple[str, ...], int] | None:
    """exe, argv and uid in three calls: quicker than a snapshot, for processes about to exit."""
    exe = _proc_exe(pid)
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    if exe is None:
        return None
    return exe, tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0") if raw), uid


class WhoResolver:
    """Resolve pids to :class:`Actor`\\ s at event time; thread-safe.

    ``connector`` (a proc connector: :meth:`open` it, wait on :meth:`fileno` and :meth:`pump`
    before resolving the file events that woke you) keeps the cache of recent processes;
    without one the cache only spares repeated reads for ``ttl`` seconds.
    """

    def __init__(
        self,
        processes: ProcessesLike,
        *,
        connector: ProcEventSource | None = None,
        grace: float = 30.0,
        ttl: float = 1.0,
        max_entries: int = 8192,
        exe_probe: Callable[[int], str | None] = _proc_exe,
        image_probe: Callable[[int], tuple[str, tuple[str, ...], int] | None] = _proc_image,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._procs = processes
        self._connector = connector
        self._grace, self._ttl, self._max = grace, ttl, max_entries
        self._probe, self._image, self._clock = exe_probe, image_probe, clock
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._pump_lock = threading.Lock()

    def open(self) -> None:
        """Open the proc connector, if any (:meth:`pump` then reads it)."""
        if self._connector is not None:
            self._connector.open()

    def close(self) -> None:
        """Close the connector, if any."""
        if self._connector is not None:
            self._connector.close()

    def fileno(self) -> int | None:
        """The connector's descriptor, readable when process events wait (None without)."""
        return self._connector.fileno() if self._connector is not None else None

    def pump(self) -> int:
        """Read the process events waiting now into the cache; how many there were."""
        if self._connector is None:
            return 0
        with self._pump_lock:
            events = self._connector.read(timeout=0.0)
            self.feed(events)
        return len(events)

    def resolve(self, pid: int) -> Actor:
        """The actor behind ``pid`` now, with its parent chain and any package transaction."""
        with self._lock:
            found = self._get(pid)
            if found is None:
                return Actor(ProcessRef(pid), source="gone")
            ref, source = found
            chain = self._chain(ref)
        return Actor(ref, chain, source, _transaction(ref, chain))

    def alive(self, pid: int) -> bool:
        """True while ``pid`` exists (ends a package transaction when False)."""
        try:
            self._procs.read(pid)
        except PlatformError:
            return False
        return True

    def feed(self, events: Sequence[ProcEvent]) -> None:
        """Update the cache with proc connector events (the thread calls this; tests may)."""
        with self._lock:
            for event in events:
                self._apply(event)
            self._expire()

    def _apply(self, event: ProcEvent) -> None:
        if isinstance(event, ExecEvent):
            self._on_exec(event.tgid)
        elif isinstance(event, UidEvent) and event.is_process and event.tgid in self._cache:
            self._cache[event.tgid].partial = True
        elif isinstance(event, ForkEvent) and event.is_process:
            parent = self._cache.get(event.parent_tgid)
            # an unknown parent's child is kept as a bare link, read in full on first use
            base = parent.ref if parent is not None else ProcessRef(event.tgid)
            ref = replace(base, pid=event.tgid, ppid=event.parent_tgid)
            self._put(event.tgid, _Entry(ref, self._clock()))
        elif isinstance(event, ExitEvent) and event.is_process:
            entry = self._cache.get(event.tgid)
            if entry is not None and entry.exited is None:
                entry.exited = self._clock()

    def _on_exec(self, pid: int) -> None:
        # three quick calls now (the process may be gone in a millisecond), the rest on use
        image = self._image(pid)
        entry = self._cache.get(pid)
        ref = ProcessRef(pid) if entry is None else entry.ref  # keeps ppid and ids of the fork
        ref = replace(ref, exe=None, cmdline=())
        if image is not None:
            ref = replace(ref, exe=image[0], cmdline=image[1], uid=image[2],
                          user=user_name(image[2]))  # fmt: skip
        self._put(pid, _Entry(ref, self._clock(), partial=True))

    def _get(self, pid: int) -> tuple[ProcessRef, str] | None:
        entry = self._cache.get(pid)
        if entry is not None and self._usable(pid, entry):
            self._cache.move_to_end(pid)
            return entry.ref, "cache" if entry.exited is not None else "live"
        loaded = self._load(pid)
        if loaded is not None:
            return loaded.ref, "live"
        if entry is not None:  # exited before we could look again: the cache still knows it
            return entry.ref, "cache"
        return None

    def _usable(self, pid: int, entry: _Entry) -> bool:
        if entry.exited is not None:
            return True
        if entry.partial:
            return False
        if self._connector is None and self._clock() - entry.stamp > self._ttl:
            return False
        now = self._probe(pid)
        return now is None or now == entry.ref.exe

    def _load(self, pid: int) -> _Entry | None:
        try:
            info = self._procs.read(pid)
        except PlatformError:
            return None
        entry = _Entry(ProcessRef.of(info), self._clock())
        self._put(pid, entry)
        return entry

    def _put(self, pid: int, entry: _Entry) -> None:
        self._cache[pid] = entry
        self._cache.move_to_end(pid)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    def _expire(self) -> None:
        due = self._clock() - self._grace
        for pid in [p for p, e in self._cache.items() if e.exited is not None and e.exited < due]:
            del self._cache[pid]

    def _chain(self, ref: ProcessRef) -> tuple[ProcessRef, ...]:
        chain: list[ProcessRef] = []
        seen = {ref.pid}
        ppid = ref.ppid
        while ppid and ppid not in seen and len(chain) < _MAX_CHAIN:
            found = self._get(ppid)
            if found is None:
                break
            chain.append(found[0])
            seen.add(ppid)
            ppid = found[0].ppid
        return tuple(chain)


def _transaction(ref: ProcessRef, chain: Sequence[ProcessRef]) -> Transaction | None:
    line = (ref, *chain)
    managers = [p for p in line if p.program in PACKAGE_MANAGERS]
    if not managers:
        return None
    dpkg = next((p for p in managers if p.program == "dpkg"), None)
    frontend = next((p for p in reversed(managers) if p.program in FRONTENDS), None)
    outer = managers[-1]
    command = (frontend or dpkg or outer).cmdline
    key = dpkg.pid if dpkg is not None else outer.pid
    return Transaction(outer.program or "dpkg", dpkg.pid if dpkg else None, command, key)


def owned_name(path: str) -> str:
    """The path a package owns for dpkg's temporary names (``x.dpkg-new`` -> ``x``)."""
    for suffix in _DPKG_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settled(Generic[T]):
    """A held item released after its transaction: the owners of its paths, and ``expected``."""

    item: T
    owners: tuple[str, ...]
    expected: bool


class TransactionHold(Generic[T]):
    """Changes made inside package transactions, held until the package manager exits.

    ``alive(pid)`` tells whether a transaction's process still runs; ``database()`` gives a
    fresh package database (called once per release). Items are released when their
    transaction ended, when they waited ``max_age`` seconds, or when more than ``max_items``
    wait (oldest first), so memory stays bounded even under a stuck package manager.
    """

    def __init__(
        self,
        alive: Callable[[int], bool],
        database: Callable[[], PackageDatabase],
        *,
        max_items: int = 100_000,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._alive, self._database = alive, database
        self._max_items, self._max_age, self._clock = max_items, max_age, clock
        self._held: OrderedDict[int, list[tuple[float, T, tuple[str, ...]]]] = OrderedDict()
        self._before: dict[int, PackageDatabase] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def hold(self, transaction: Transaction, item: T, paths: Sequence[str]) -> None:
        """Keep ``item`` (whose changed paths are ``paths``) until its transaction ends."""
        if transaction.key not in self._before:
            self._before[transaction.key] = self._database()
        self._held.setdefault(transaction.key, []).append((self._clock(), item, tuple(paths)))
        self._count += 1

    def release(self, *, everything: bool = False) -> list[Settled[T]]:
        """Items whose transaction ended (or all with ``everything``), owners looked up."""
        now = self._clock()
        due: list[tuple[int, tuple[float, T, tuple[str, ...]]]] = []
        for key in list(self._held):
            items = self._held[key]
            if everything or not self._alive(key) or now - items[0][0] > self._max_age:
                due += [(key, item) for item in self._held.pop(key)]
        while self._count - len(due) > self._max_items and self._held:
            key, items = self._held.popitem(last=False)
            due += [(key, item) for item in items]
        if not due:
            return []
        self._count -= len(due)
        after = self._database()
        settled = [_settle(item, paths, after, self._before[key]) for key, (_, item, paths) in due]
        for key in {key for key, _ in due} - set(self._held):
            self._before.pop(key, None)
        return settled


def _settle(
    item: T, paths: Sequence[str], after: PackageDatabase, before: PackageDatabase
) -> Settled[T]:
    found = [after.owner(owned_name(p)) or before.owner(owned_name(p)) for p in paths]
    owners = tuple(dict.fromkeys(o for group in found for o in group))
    return Settled(item, owners, bool(found) and all(found))
