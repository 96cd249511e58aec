"""Realtime integrity: every change under the watched paths as it happens, with who made it.

:class:`RealtimeWatcher` reads one fanotify notification group with ``FAN_REPORT_DFID_NAME``,
``FAN_UNLIMITED_QUEUE`` and ``FAN_UNLIMITED_MARKS``, holding one *filesystem* mark per file
system under a watched path (mount marks cannot carry directory-entry events): there is no
per-directory watch to set up or run out of, and the queue does not drop events. Events outside
the watched paths are filtered out. Each change is a :class:`RealtimeChange`:

=============================  ===============================================================
kernel event                   kind
=============================  ===============================================================
``FAN_CREATE``                 ``create``; ``link`` for a non-directory, not written in the same
                               event, that has more than one name when the event is read (a
                               hard link; best effort: a link made to a file created just
                               before, unread yet, makes that file a ``link`` too)
``FAN_CLOSE_WRITE``            ``modify`` (the writer closed the file)
``FAN_MODIFY``                 ``modify``, once, for a file still not closed ``open_write_delay``
                               seconds after its first write by that pid
``FAN_ATTRIB``                 ``attrib`` (mode, owner, times, xattrs, ACLs, capabilities)
``FAN_DELETE``                 ``delete``
``FAN_RENAME``                 ``rename`` with ``old_path`` (one event holds both names)
=============================  ===============================================================

Gaps: ``on_gap(reason, paths)`` asks the caller to check ``paths`` against the baseline -- at
``start`` (changes made while nothing watched), after a queue ``overflow`` (only possible when
the unlimited queue was refused) and after a ``restart`` of the group when reading failed.

Who-data: with a :class:`~yoroi.modules.integrity.whodata.WhoResolver` each change carries its
:class:`~yoroi.modules.integrity.whodata.Actor`, resolved when the event is read. With a
package database factory too, changes made inside a package transaction are held until the
package manager exits, then carry the owning ``packages`` and ``expected``.

Limits: ``time`` is when the event was read (fanotify events carry no time stamp); a path is
built from the directory's *current* name, so an event read after its directory was renamed
names the new place; events in a directory removed before they were read cannot be named (the
directory's own ``delete`` is reported, and counted ``unresolved``); the kernel merges identical
queued events, so two writes of one file by one pid between two reads are one ``modify``.
``on_change`` and ``on_gap`` run in the reader thread: keep them quick.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from yoroi.errors import PlatformError, Unsupported
from yoroi.modules.integrity.whodata import Actor, TransactionHold, WhoResolver
from yoroi.platform.linux.dpkg import PackageDatabase
from yoroi.platform.linux.fanotify import (
    FanClass,
    FanInit,
    FanMask,
    Fanotify,
    FanotifyEvent,
    FanotifyLike,
)

__all__ = ["GapReason", "RealtimeChange", "RealtimeKind", "RealtimeWatcher", "FANOTIFY_FLAGS"]

log = logging.getLogger(__name__)
FANOTIFY_FLAGS = FanInit.REPORT_DFID_NAME | FanInit.UNLIMITED_QUEUE | FanInit.UNLIMITED_MARKS
_MASK = (FanMask.CREATE | FanMask.DELETE | FanMask.CLOSE_WRITE | FanMask.MODIFY
         | FanMask.ATTRIB | FanMask.ONDIR)  # fmt: skip
_OPEN_WRITE_LIMIT = 100_000
_RESTART_PAUSE_S = 1.0
_DELETED = " (deleted)"


class RealtimeKind(enum.StrEnum):
    """What happened to the path."""

    CREATE = "create"
    MODIFY = "modify"
    ATTRIB = "attrib"
    DELETE = "delete"
    RENAME = "rename"
    LINK = "link"


_NAMING = (RealtimeKind.CREATE, RealtimeKind.LINK)


class GapReason(enum.StrEnum):
    """Why events may be missing and the caller should check paths against the baseline."""

    START = "start"
    RESTART = "restart"
    OVERFLOW = "overflow"


@dataclass(frozen=True, slots=True)
class RealtimeChange:
    """One change seen in realtime; ``time`` is epoch seconds when it was read."""

    path: str
    kind: RealtimeKind
    time: float
    pid: int
    old_path: str | None = None  # RENAME: the name before
    is_dir: bool = False
    actor: Actor | None = None
    packages: tuple[str, ...] = ()  # packages owning the path (package transactions only)
    expected: bool = False  # a package manager changed a file its packages own

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, for the change log and events."""
        out: dict[str, Any] = {"path": self.path, "kind": str(self.kind), "time": self.time,
                               "pid": self.pid, "is_dir": self.is_dir,
                               "expected": self.expected}  # fmt: skip
        if self.old_path is not None:
            out["old_path"] = self.old_path
        if self.actor is not None:
            out["actor"] = self.actor.as_dict()
        if self.packages:
            out["packages"] = list(self.packages)
        return out


FanotifyFactory = Callable[[FanInit], FanotifyLike]


def _real_fanotify(flags: FanInit) -> FanotifyLike:
    return Fanotify(FanClass.NOTIF, flags, buffer_size=1 << 20)


class RealtimeWatcher:
    """Reports each change under ``paths`` to ``on_change``; gaps to ``on_gap``."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        on_change: Callable[[RealtimeChange], None],
        on_gap: Callable[[GapReason, tuple[str, ...]], None],
        *,
        who: WhoResolver | None = None,
        packages: Callable[[], PackageDatabase] | None = None,
        fanotify: FanotifyFactory = _real_fanotify,
        ignore_pids: Iterable[int] | None = None,
        open_write_delay: float = 1.0,
    ) -> None:
        self.paths = tuple(sorted({os.path.realpath(p) for p in paths}))
        self._prefixes = tuple(p.rstrip("/") + "/" for p in self.paths)
        self.on_change, self.on_gap = on_change, on_gap
        self._who, self._factory = who, fanotify
        self._hold: TransactionHold[RealtimeChange] | None = None
        if who is not None and packages is not None:
            self._hold = TransactionHold(who.alive, packages)
        self._ignore = frozenset({os.getpid()} if ignore_pids is None else ignore_pids)
        self.open_write_delay = open_write_delay
        self._open_writes: dict[tuple[int, str], tuple[float, RealtimeChange]] = {}
        self._fan: FanotifyLike | None = None
        self._poller = select.poll()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.renames_native = True
        self.counters = {"events": 0, "changes": 0, "overflows": 0, "unresolved": 0,
                         "gaps": 0, "restarts": 0}  # fmt: skip

    def start(self) -> None:
        """Mark the file systems and start the reader thread (which first reports the
        ``start`` gap). PlatformError (PermissionDenied, Unsupported) when the kernel refuses."""
        if self._thread is not None:
            return
        self._fan = self._open()
        if self._who is not None:
            self._who.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="yoroi-integrity-realtime",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Stop reading, release held package changes, close the group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._flush_open_writes(everything=True)
        self._release(everything=True)
        if self._who is not None:
            self._who.close()
        if self._fan is not None:
            self._fan.close()
            self._fan = None

    def __enter__(self) -> RealtimeWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def watched(self, path: str) -> bool:
        """True when ``path`` is a watched path or below one."""
        return path in self.paths or path.startswith(self._prefixes)

    # -- the group ------------------------------------------------------------------------

    def _open(self) -> FanotifyLike:
        fan = self._factory(FANOTIFY_FLAGS)
        try:
            self._mark(fan)
        except BaseException:
            fan.close()
            raise
        return fan

    def _mark(self, fan: FanotifyLike) -> None:
        marked: set[int] = set()
        for path in self.paths:
            dev = os.stat(path).st_dev
            if dev in marked:
                continue
            marked.add(dev)
            try:
                fan.mark(path, _MASK | FanMask.RENAME, kind="filesystem")
            except Unsupported:  # kernels before 5.17: the two halves, reported apart
                self.renames_native = False
                fan.mark(path, _MASK | FanMask.MOVE, kind="filesystem")

    def _watch_fds(self) -> None:
        assert self._fan is not None
        self._poller = select.poll()
        fds = [self._fan.fileno(), self._who.fileno() if self._who is not None else None]
        for fd in fds:
            if fd is not None:
                self._poller.register(fd, select.POLLIN)

    def _run(self) -> None:
        self._watch_fds()
        self._gap(GapReason.START)
        while not self._stop.is_set():
            try:
                self._read_once()
            except PlatformError:
                log.exception("integrity realtime: reading fanotify failed; restarting the group")
                self._restart()
            except Exception:
                log.exception("integrity realtime: handling fanotify events failed")

    def _read_once(self) -> None:
        assert self._fan is not None
        self._poller.poll(200)
        if self._who is not None:
            self._who.pump()  # exec/fork first: they happened before the changes they caused
        for event in self._fan.read():
            self._handle(event)
        self._flush_open_writes()
        self._release()

    def _restart(self) -> None:
        self.counters["restarts"] += 1
        if self._fan is not None:
            self._fan.close()
            self._fan = None
        while not self._stop.wait(_RESTART_PAUSE_S):
            try:
                self._fan = self._open()
            except (PlatformError, OSError):
                log.exception("integrity realtime: cannot restart the fanotify group yet")
                continue
            self._watch_fds()
            self._gap(GapReason.RESTART)
            return

    def _gap(self, reason: GapReason) -> None:
        self.counters["gaps"] += 1
        log.warning("integrity realtime: %s: checking %s against the baseline", reason,
                    ", ".join(self.paths))  # fmt: skip
        try:
            self.on_gap(reason, self.paths)
        except Exception:
            log.exception("integrity realtime: on_gap failed")

    # -- events -> changes ------------------------------------------------------------------

    def _handle(self, event: FanotifyEvent) -> None:
        self.counters["events"] += 1
        if event.overflow:
            self.counters["overflows"] += 1
            self._gap(GapReason.OVERFLOW)
            return
        if event.pid in self._ignore:
            return
        path = _clean(event.path)
        if path is None:
            self.counters["unresolved"] += 1
            return
        old = _clean(event.old_path)
        if not (self.watched(path) or (old is not None and self.watched(old))):
            return
        now = time.time()
        actor = self._who.resolve(event.pid) if self._who is not None else None
        base = RealtimeChange(path, RealtimeKind.CREATE, now, event.pid,
                              is_dir=bool(event.mask & FanMask.ONDIR), actor=actor)  # fmt: skip
        if event.mask & FanMask.RENAME:
            self._emit(replace(base, kind=RealtimeKind.RENAME, old_path=old))
            return
        for kind in self._kinds(event.mask, base):
            self._emit(replace(base, kind=kind))

    def _kinds(self, mask: int, base: RealtimeChange) -> list[RealtimeKind]:
        order: list[RealtimeKind] = []
        if mask & (FanMask.CREATE | FanMask.MOVED_TO):
            written = bool(mask & (FanMask.MODIFY | FanMask.CLOSE_WRITE))
            order.append(_created(base.path, base.is_dir or written))
        if self._written(mask, base):
            order.append(RealtimeKind.MODIFY)
        if mask & FanMask.ATTRIB:
            order.append(RealtimeKind.ATTRIB)
        if mask & (FanMask.DELETE | FanMask.MOVED_FROM):
            if order and order[0] in _NAMING and os.path.lexists(base.path):
                return [RealtimeKind.DELETE, *order]  # merged: the name was deleted, then made
            order.append(RealtimeKind.DELETE)
        return order

    def _written(self, mask: int, base: RealtimeChange) -> bool:
        key = (base.pid, base.path)
        if mask & FanMask.CLOSE_WRITE:
            self._open_writes.pop(key, None)
            return True
        if mask & FanMask.MODIFY and key not in self._open_writes:
            if len(self._open_writes) >= _OPEN_WRITE_LIMIT:
                self._flush_open_writes(everything=True)
            self._open_writes[key] = (time.monotonic(), base)
        return False

    def _flush_open_writes(self, *, everything: bool = False) -> None:
        due = time.monotonic() - self.open_write_delay
        for key, (since, base) in list(self._open_writes.items()):
            if everything or since <= due:
                del self._open_writes[key]
                self._emit(replace(base, kind=RealtimeKind.MODIFY))

    def _emit(self, change: RealtimeChange) -> None:
        transaction = change.actor.transaction if change.actor is not None else None
        if self._hold is not None and transaction is not None:
            paths = [change.path] if change.old_path is None else [change.old_path, change.path]
            self._hold.hold(transaction, change, paths)
            return
        self._deliver(change)

    def _release(self, *, everything: bool = False) -> None:
        if self._hold is None or not len(self._hold):
            return
        for settled in self._hold.release(everything=everything):
            self._deliver(replace(settled.item, packages=settled.owners,
                                  expected=settled.expected))  # fmt: skip

    def _deliver(self, change: RealtimeChange) -> None:
        self.counters["changes"] += 1
        try:
            self.on_change(change)
        except Exception:
            log.exception("integrity realtime: on_change failed for %s", change.path)


def _created(path: str, new_inode: bool) -> RealtimeKind:
    if new_inode:
        return RealtimeKind.CREATE
    try:
        info = os.lstat(path)
    except OSError:
        return RealtimeKind.CREATE
    linked = not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1
    return RealtimeKind.LINK if linked else RealtimeKind.CREATE


def _clean(path: str | None) -> str | None:
    """The path without the kernel's mark of a removed directory in it."""
    if path is None or _DELETED not in path:
        return path
    head, _, tail = path.partition(_DELETED)
    return head + tail if tail == "" or tail.startswith("/") else path
