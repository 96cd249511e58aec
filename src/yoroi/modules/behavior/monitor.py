"""File activity of every process under the watched directories, with the acting pid.

:class:`FileMonitor` reads one fanotify notification group (``FAN_REPORT_DFID_NAME``) with a
filesystem mark on each file system holding a watched directory -- a mount mark cannot carry
directory-entry events -- and turns its events into :class:`FileEvent`\\ s for paths under the
watched directories:

=====================  =========================================================================
kernel event           FileEvent
=====================  =========================================================================
``FAN_CREATE``         ``CREATE`` (files and directories)
``FAN_DELETE``         ``DELETE``
``FAN_RENAME``         ``RENAME`` with ``old_path`` (one event holds both names; on kernels
                       without it, adjacent ``MOVED_FROM``/``MOVED_TO`` of one pid are paired,
                       and a lone half becomes ``DELETE``/``CREATE``)
``FAN_CLOSE_WRITE``    ``WRITE`` (the file is complete now)
``FAN_MODIFY``         ``WRITE`` once, when the file is still not closed ``open_write_delay``
                       seconds after its first modification by that pid (a long-lived writer)
=====================  =========================================================================

The kernel merges identical queued events; with names reported, events on one name by one pid
may arrive as one event with several bits (``CREATE|MODIFY|CLOSE_WRITE``): they are emitted in
the order create, write, delete -- or delete first when the name exists again.

``on_event`` and ``on_overflow`` are called from the monitor's reader thread: keep them quick
and never block them on file access under the watched file systems. An overflow (events lost)
means the caller should rescan. Events caused by this process itself are dropped.

With ``protect`` and ``backup``, a :class:`~yoroi.modules.behavior.prewrite.PreWriteGuard` also
runs: it copies a protected file into the ``BackupStore`` before an untrusted process first
changes it (see that module for the kernel facts and why it cannot deadlock).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from yoroi.errors import Unsupported
from yoroi.modules.behavior.backup import BackupRecord, BackupStore, Refusal
from yoroi.modules.behavior.prewrite import PreWriteGuard, Protect
from yoroi.modules.behavior.types import Activity, FileEvent
from yoroi.platform.linux.fanotify import FanClass, FanInit, FanMask, Fanotify, FanotifyEvent

__all__ = ["FileMonitor"]

log = logging.getLogger(__name__)
_BASE_MASK = FanMask.CREATE | FanMask.DELETE | FanMask.CLOSE_WRITE | FanMask.MODIFY | FanMask.ONDIR
_DIRTY_LIMIT = 100_000
_Key = tuple[int, str]


class FileMonitor:
    """Reports file activity under ``paths``, and backs up protected files before changes.

    ``on_event(event)`` and ``on_overflow()`` run in the reader thread; ``on_refusal`` (a copy
    refused: size cap, budget) and ``on_backup`` in a backup worker thread.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        on_event: Callable[[FileEvent], None],
        *,
        protect: Protect | None = None,
        backup: BackupStore | None = None,
        on_overflow: Callable[[], None] | None = None,
        on_refusal: Callable[[Refusal], None] | None = None,
        on_backup: Callable[[BackupRecord], None] | None = None,
        deadman_timeout: float = 10.0,
        open_write_delay: float = 1.0,
    ) -> None:
        self.paths = tuple(os.path.realpath(p) for p in paths)
        self.on_event, self.on_overflow = on_event, on_overflow
        self.counters = {"events": 0, "emitted": 0, "overflows": 0, "unresolved": 0}
        self.guard: PreWriteGuard | None = None
        if protect is not None and backup is not None:
            self.guard = PreWriteGuard(
                self.paths, protect, backup, on_refusal=on_refusal, on_backup=on_backup,
                deadman_timeout=deadman_timeout,
            )
        self._own_pid = os.getpid()
        self._fan: Fanotify | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()  # a watchdog may race the owner
        self._moved_from: FanotifyEvent | None = None
        self.open_write_delay = open_write_delay
        self._open_writes: dict[_Key, float] = {}  # modified, not yet closed: since when
        self._announced: set[_Key] = set()  # long-lived writers already reported
        self.renames_native = True

    def start(self) -> None:
        """Mark the file systems and start reading (PlatformError when the kernel refuses)."""
        flags = FanInit.REPORT_DFID_NAME | FanInit.UNLIMITED_QUEUE | FanInit.UNLIMITED_MARKS
        fan = Fanotify(FanClass.NOTIF, flags)
        try:
            self._mark(fan)
            if self.guard is not None:
                self.guard.start()
        except BaseException:
            fan.close()
            raise
        self._fan = fan
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, name="yoroi-file-monitor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading; the guard answers every pending event; every descriptor is closed."""
        with self._stop_lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.guard is not None:
            self.guard.stop()
        if self._fan is not None:
            self._fan.close()
            self._fan = None

    def __enter__(self) -> FileMonitor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _mark(self, fan: Fanotify) -> None:
        marked: set[int] = set()
        for path in self.paths:
            dev = os.stat(path).st_dev
            if dev in marked:
                continue
            marked.add(dev)
            try:
                fan.mark(path, _BASE_MASK | FanMask.RENAME, kind="filesystem")
            except Unsupported:
                self.renames_native = False
                fan.mark(path, _BASE_MASK | FanMask.MOVE, kind="filesystem")

    def _read_loop(self) -> None:
        fan = self._fan
        assert fan is not None
        while not self._stop.is_set():
            try:
                events = fan.read(timeout=0.2)
                for event in events:
                    self._handle(event)
                if not events:
                    self._flush_move()
                self._announce_open_writes()
            except Exception:
                log.exception("file monitor: handling fanotify events failed")

    def _handle(self, event: FanotifyEvent) -> None:
        self.counters["events"] += 1
        if event.overflow:
            self._overflow()
            return
        if event.pid == self._own_pid:
            return
        if event.path is None:
            self.counters["unresolved"] += 1
            return
        if event.mask & FanMask.RENAME:
            self._emit(Activity.RENAME, event.path, event.pid, event.old_path)
            return
        if event.mask & FanMask.MOVED_TO and self._pairs_with(event):
            old = self._moved_from
            self._moved_from = None
            assert old is not None and old.path is not None
            self._emit(Activity.RENAME, event.path, event.pid, old.path)
            return
        self._flush_move()
        for activity in self._activities(event):
            self._emit(activity, event.path, event.pid)
        if event.mask & FanMask.MOVED_FROM:
            self._moved_from = event

    def _activities(self, event: FanotifyEvent) -> list[Activity]:
        mask, path = event.mask, event.path
        assert path is not None
        order: list[Activity] = []
        if mask & (FanMask.CREATE | FanMask.MOVED_TO):
            order.append(Activity.CREATE)
        if self._is_write(mask, event.pid, path):
            order.append(Activity.WRITE)
        if mask & FanMask.DELETE:
            if order and order[0] is Activity.CREATE and os.path.lexists(path):
                return [Activity.DELETE, *order]
            order.append(Activity.DELETE)
        return order

    def _is_write(self, mask: int, pid: int, path: str) -> bool:
        key = (pid, path)
        if mask & FanMask.CLOSE_WRITE:
            self._open_writes.pop(key, None)
            self._announced.discard(key)
            return True
        if mask & FanMask.MODIFY and key not in self._announced:
            if len(self._open_writes) > _DIRTY_LIMIT:
                self._open_writes.clear()
            self._open_writes.setdefault(key, time.monotonic())
        return False

    def _announce_open_writes(self) -> None:
        due = time.monotonic() - self.open_write_delay
        for key in [k for k, since in self._open_writes.items() if since <= due]:
            del self._open_writes[key]
            if len(self._announced) > _DIRTY_LIMIT:
                self._announced.clear()
            self._announced.add(key)
            self._emit(Activity.WRITE, key[1], key[0])

    def _pairs_with(self, moved_to: FanotifyEvent) -> bool:
        old = self._moved_from
        return old is not None and old.pid == moved_to.pid and old.path is not None

    def _flush_move(self) -> None:
        old, self._moved_from = self._moved_from, None
        if old is not None and old.path is not None:
            self._emit(Activity.DELETE, old.path, old.pid)

    def _emit(self, activity: Activity, path: str, pid: int, old: str | None = None) -> None:
        if not (self._watched(path) or (old is not None and self._watched(old))):
            return
        self.counters["emitted"] += 1
        event = FileEvent(activity, path, pid, time.monotonic(), old_path=old)
        try:
            self.on_event(event)
        except Exception:
            log.exception("file monitor: on_event failed for %s", path)

    def _watched(self, path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.paths)

    def _overflow(self) -> None:
        self.counters["overflows"] += 1
        log.warning("file monitor: the kernel queue overflowed; rescan the watched directories")
        if self.on_overflow is not None:
            try:
                self.on_overflow()
            except Exception:
                log.exception("file monitor: on_overflow failed")

