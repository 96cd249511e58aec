"""Copy a file before an untrusted process first changes it: fanotify permission events.

One permission group (class ``PRE_CONTENT``, ``FAN_REPORT_TID``) holds a filesystem mark on each
file system of the watched directories:

* where the file system supports pre-content events (ext4, xfs, btrfs; kernel 6.14+):
  ``FAN_PRE_ACCESS``, which the kernel raises before each read, write, ``truncate``/``ftruncate``
  and ``mmap`` of a file -- but *not* before the truncation of ``open(O_TRUNC)`` (checked on
  6.18) -- plus ``FAN_OPEN_PERM``, used only when the opener's own ``openat`` flags (read from
  ``/proc/<tid>/syscall`` while it waits on us) carry ``O_TRUNC`` (unknown flags: assume so);
* elsewhere (tmpfs): ``FAN_OPEN_PERM`` on every open, the bounded copy-on-first-open fallback.

For an event by a process for which ``protect(path, pid)`` is true, the original content is
copied into the :class:`BackupStore` *before* the event is answered ALLOW: once per (file,
process) -- later events of the same process on the same inode are its own changes -- and once
per file version across processes. Nothing is ever denied.

Why this cannot deadlock on itself: the reader thread only reads events, ``fstat`` calls on the
event descriptor and reads of ``/proc``; it never opens a file on a watched file system. Copies
run in worker threads and read the event's own descriptor (``sendfile`` from offset 0; the
kernel opened it without notification), so they never open the original. Any event caused by
this process (the workers writing the backup, a restore, the index) is answered ALLOW by the
reader at once, so the backup directory may even sit on a watched file system; it is then also
hidden from the group by an ignore mark so that its writes cost no round trip. Events outside
the watched directories are allowed at once. A copy slower than ``deadman_timeout`` is allowed
by the adapter's deadman; the copy then sees the file change and is discarded
(:attr:`RefusalReason.CHANGED`).

Not covered: files a process opened before :meth:`PreWriteGuard.start` (the kernel decides at
open time whether a file raises pre-content events); ``unlink`` of a file nobody opened (there is
no permission event for it); on tmpfs, writes through a descriptor opened before the start.
"""

from __future__ import annotations

import logging
import os
import platform
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from yoroi.errors import Unsupported
from yoroi.modules.behavior.backup import BackupRecord, BackupStore, Refusal
from yoroi.platform.linux.fanotify import FanClass, FanInit, FanMask, Fanotify, FanotifyEvent

log = logging.getLogger(__name__)
Protect = Callable[[str, int], bool]
_O_TRUNC = os.O_TRUNC
# syscall number -> index of the flags argument (None: flags unknown, e.g. openat2's struct).
_OPEN_CALLS: dict[str, dict[int, int | None]] = {
    "x86_64": {2: 1, 257: 2, 304: 2, 437: None},
    "aarch64": {56: 2, 265: 2, 437: None},
}
_CREAT_CALLS = {"x86_64": {85}}
_HANDLED_LIMIT = 65536


class PreWriteGuard:
    """Keeps a copy of each protected file before an untrusted process changes it.

    ``paths`` are the watched directories; ``on_refusal(refusal)`` and ``on_backup(record)``
    are called from a worker thread; ``protect(path, pid)`` from the reader thread (it must be
    quick and must not open files on the watched file systems).
    """

    def __init__(
        self,
        paths: Sequence[str],
        protect: Protect,
        backup: BackupStore,
        *,
        on_refusal: Callable[[Refusal], None] | None = None,
        on_backup: Callable[[BackupRecord], None] | None = None,
        deadman_timeout: float = 10.0,
        workers: int = 4,
    ) -> None:
        self.paths = tuple(paths)
        self.protect, self.backup = protect, backup
        self.on_refusal, self.on_backup = on_refusal, on_backup
        self.deadman_timeout = deadman_timeout
        self.modes: dict[int, str] = {}  # st_dev -> "pre-content" | "open"
        self.counters = {"events": 0, "copied": 0, "shared": 0, "refused": 0, "skipped": 0}
        self._workers = workers
        self._own_pid = os.getpid()
        self._handled: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._lock = threading.Lock()
        self._fan: Fanotify | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._stop_lock = threading.Lock()  # a watchdog may race the owner
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Mark the file systems and start answering (raises PlatformError when refused)."""
        fan = self._open_group()
        try:
            self._mark_all(fan)
        except BaseException:
            fan.close()
            raise
        self._fan = fan
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="yoroi-backup")
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, name="yoroi-prewrite",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the copies in flight, answer every pending event, close the group."""
        with self._stop_lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fan is not None:
            self._fan.close()
            self._fan = None

    def _open_group(self) -> Fanotify:
        flags = FanInit.REPORT_TID | FanInit.UNLIMITED_QUEUE | FanInit.UNLIMITED_MARKS
        try:
            return Fanotify(FanClass.PRE_CONTENT, flags, deadman_timeout=self.deadman_timeout)
        except Unsupported:
            return Fanotify(FanClass.CONTENT, flags, deadman_timeout=self.deadman_timeout)

    def _mark_all(self, fan: Fanotify) -> None:
        for path in self.paths:
            dev = os.stat(path).st_dev
            if dev in self.modes:
                continue
            try:
                fan.mark(path, FanMask.PRE_ACCESS | FanMask.OPEN_PERM, kind="filesystem")
                self.modes[dev] = "pre-content"
            except Unsupported:
                fan.mark(path, FanMask.OPEN_PERM, kind="filesystem")
                self.modes[dev] = "open"
        self._hide(fan, str(self.backup.blob_dir))
        self._hide(fan, str(self.backup.root))

    def _hide(self, fan: Fanotify, directory: str) -> None:
        if os.stat(directory).st_dev not in self.modes:
            return
        mask = FanMask.OPEN_PERM | FanMask.EVENT_ON_CHILD
        if self.modes[os.stat(directory).st_dev] == "pre-content":
            mask |= FanMask.PRE_ACCESS
        try:
            fan.mark(directory, mask, ignore=True)
        except Unsupported as exc:
            log.info("backup directory %s stays visible to the group: %s", directory, exc)

    def _read_loop(self) -> None:
        fan = self._fan
        assert fan is not None
        while not self._stop.is_set():
            try:
                events = fan.read(timeout=0.2)
            except Exception:
                log.exception("pre-write backup: reading fanotify events failed")
                continue
            for event in events:
                if event.is_permission:
                    self._dispatch(fan, event)

    def _dispatch(self, fan: Fanotify, event: FanotifyEvent) -> None:
        self.counters["events"] += 1
        try:
            job = self._triage(event)
        except Exception:
            log.exception("pre-write backup: triage of %s failed; allowing it", event.path)
            job = None
        if job is None or self._pool is None:
            fan.respond(event, True)
            return
        try:
            self._pool.submit(self._copy_then_allow, fan, event, *job)
        except RuntimeError:  # the pool is shutting down
            fan.respond(event, True)

    def _triage(self, event: FanotifyEvent) -> tuple[str, int, tuple[int, int, int]] | None:
        """``(path, pid, key)`` when a copy is due, else None (answer ALLOW now)."""
        path = event.path
        if path is None or event.fd is None or not _under(path, self.paths):
            return None
        pid = _tgid(event.pid)
        if pid is None or pid == self._own_pid:
            return None
        info = os.fstat(event.fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if event.mask & FanMask.OPEN_PERM and self.modes.get(info.st_dev) == "pre-content":
            if not _opening_with_trunc(event.pid):
                return None
        key = (info.st_dev, info.st_ino, pid)
        with self._lock:
            if key in self._handled:
                return None
        if not self.protect(path, pid):
            self.counters["skipped"] += 1
            return None
        return path, pid, key

    def _copy_then_allow(
        self, fan: Fanotify, event: FanotifyEvent, path: str, pid: int, key: tuple[int, int, int]
    ) -> None:
        try:
            assert event.fd is not None
            outcome = self.backup.keep(path, event.fd, pid)
        except Exception:
            log.exception("pre-write backup of %s failed", path)
            return
        finally:
            fan.respond(event, True)
        self._remember(key)
        self._report(outcome)

    def _remember(self, key: tuple[int, int, int]) -> None:
        with self._lock:
            self._handled[key] = None
            if len(self._handled) > _HANDLED_LIMIT:
                self._handled.popitem(last=False)

    def _report(self, outcome: BackupRecord | Refusal) -> None:
        if isinstance(outcome, Refusal):
            self.counters["refused"] += 1
            log.warning("no backup of %s: %s (%s)", outcome.path, outcome.reason, outcome.detail)
            callback: Callable[..., None] | None = self.on_refusal
        else:
            self.counters["copied" if len(outcome.pids) == 1 else "shared"] += 1
            callback = self.on_backup
        if callback is not None:
            try:
                callback(outcome)
            except Exception:
                log.exception("pre-write backup callback failed")


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _tgid(tid: int) -> int | None:
    """The process (thread group) of thread ``tid``; None when it is gone."""
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _opening_with_trunc(tid: int) -> bool:
    """Whether thread ``tid``, waiting in an open call, asked for O_TRUNC (True if unknown)."""
    try:
        with open(f"/proc/{tid}/syscall") as handle:
            fields = handle.read().split()
        number = int(fields[0])
    except (OSError, ValueError, IndexError):
        return True
    arch = platform.machine()
    if number in _CREAT_CALLS.get(arch, set()):
        return True
    calls = _OPEN_CALLS.get(arch)
    if calls is None or number not in calls:
        return True
    index = calls[number]
    if index is None or len(fields) <= index + 1:
        return True
    return bool(int(fields[index + 1], 16) & _O_TRUNC)
