"""Copy a file before an untrusted process first changes it: fanotify permission events.

One permission group (class ``PRE_CONTENT``, ``FAN_REPORT_TID``) holds a filesystem mark on each
file system of the watched directories:

* where the file system supports pre-content events (ext4, xfs, btrfs; kernel 6.14+):
  ``FAN_PRE_ACCESS``, which the kernel raises before each read, write, ``truncate``/``ftruncate``
  and ``mmap`` of a file -- but *not* before the truncation of ``open(O_TRUNC)`` (checked on
  6.18) -- plus ``FAN_OPEN_PERM``, used only when the opener's own ``openat`` flags carry
  ``O_TRUNC``;
* elsewhere (tmpfs): ``FAN_OPEN_PERM`` on every open, the bounded copy-on-first-open fallback.

The event does not say whether the access reads or writes, so the guard asks the waiting thread:
``/proc/<tid>/syscall`` names the call it is blocked in and its arguments (``read``/``pread64``/
``readv``/``preadv(2)``, a private or read-only ``mmap``: a read; ``sendfile``/``splice``/
``copy_file_range``: a write when the descriptor written to is this file; an ``open``: its
flags). Anything unknown counts as a write.

For a *write* (or truncation) by a process for which ``protect(path, pid)`` is true, the original
content is copied into the :class:`BackupStore` *before* the event is answered ALLOW: once per
(file, process) -- later events of the same process on the same inode are its own changes -- and
once per file version across processes. Empty files are not copied (nothing to put back; the
ledger knows who created them). For a *read*, the guard only holds a duplicate of the event's
descriptor (:meth:`BackupStore.hold`), so that a read-then-unlink stays restorable without a copy
per read. Nothing is ever denied.

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

import enum
import logging
import mmap
import os
import platform
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from yoroi.errors import Unsupported
from yoroi.modules.behavior.backup import BackupRecord, BackupStore, Refusal
from yoroi.modules.behavior.holds import Held
from yoroi.platform.linux.fanotify import (
    FanClass,
    FanInit,
    FanMask,
    Fanotify,
    FanotifyEvent,
    read_events,
)

log = logging.getLogger(__name__)
Protect = Callable[[str, int], bool]
_ARCH = platform.machine()
# syscall number -> index of the flags argument (None: flags unknown, e.g. openat2's struct).
_OPEN_CALLS: dict[int, int | None] = {
    "x86_64": {2: 1, 257: 2, 304: 2, 437: None},
    "aarch64": {56: 2, 265: 2, 437: None},
}.get(_ARCH, {})
_CREAT_CALLS = {"x86_64": {85}}.get(_ARCH, set())
# read, readv, pread64, preadv, preadv2
_READ_CALLS = {"x86_64": {0, 17, 19, 295, 327}, "aarch64": {63, 65, 67, 69, 286}}.get(_ARCH, set())
_MMAP_CALL = {"x86_64": 9, "aarch64": 222}.get(_ARCH)
# sendfile, splice, copy_file_range -> index of the descriptor written to
_TRANSFER_CALLS = {"x86_64": {40: 0, 275: 2, 326: 2},
                   "aarch64": {71: 0, 76: 2, 285: 2}}.get(_ARCH, {})
_HANDLED_LIMIT = 65536
_TGID_TTL = 1.0  # seconds a tid -> tgid answer is reused (a tid is not reused that soon)
_TGID_LIMIT = 4096


class Intent(enum.Enum):
    """What the waiting thread is about to do to the file."""

    NONE = "none"  # nothing to act on (an open without O_TRUNC where reads come as events)
    READ = "read"
    WRITE = "write"


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
        self.counters = {"events": 0, "copied": 0, "shared": 0, "refused": 0, "skipped": 0,
                         "held": 0, "empty": 0}
        self._workers = workers
        self._own_pid = os.getpid()
        self._handled: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._tgids: dict[int, tuple[int, float]] = {}
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
        read_events(fan, self._stop, lambda event: self._permission(fan, event),
                    "pre-write backup")

    def _permission(self, fan: Fanotify, event: FanotifyEvent) -> None:
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
        pid = self._tgid(event.pid)
        if pid is None or pid == self._own_pid:
            return None
        info = os.fstat(event.fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        key = (info.st_dev, info.st_ino, pid)
        if key in self._handled:  # its own change, or a copy is already kept for it
            return None
        intent = self._intent(event, info)
        if intent is Intent.NONE or (intent is Intent.READ and key in self.backup.holds):
            return None
        if intent is Intent.WRITE and info.st_size == 0:
            self.counters["empty"] += 1
            self._remember(key)
            return None
        if not self.protect(path, pid):
            self.counters["skipped"] += 1
            return None
        if intent is Intent.READ:
            self._hold(path, event.fd, pid, info)
            return None
        return path, pid, key

    def _intent(self, event: FanotifyEvent, info: os.stat_result) -> Intent:
        if not event.mask & FanMask.OPEN_PERM:
            return _access_intent(event.pid, info)
        flags = _open_flags(event.pid)
        if flags is None or flags & os.O_TRUNC:
            return Intent.WRITE
        if self.modes.get(info.st_dev) == "pre-content":
            return Intent.NONE  # its reads and writes raise their own events
        return Intent.READ if flags & os.O_ACCMODE == os.O_RDONLY else Intent.WRITE

    def _hold(self, path: str, fd: int, pid: int, info: os.stat_result) -> None:
        self.counters["held"] += 1
        for evicted in self.backup.hold(path, fd, pid, info):
            if self._pool is None:
                os.close(evicted.fd)
                continue
            try:
                self._pool.submit(self._keep_held, evicted)
            except RuntimeError:  # the pool is shutting down
                os.close(evicted.fd)

    def _keep_held(self, held: Held) -> None:
        try:
            outcome = self.backup.keep_held(held)
        except Exception:
            log.exception("backup of the held %s failed", held.path)
            return
        if outcome is not None:
            self._report(outcome)

    def _tgid(self, tid: int) -> int | None:
        now = time.monotonic()
        cached = self._tgids.get(tid)
        if cached is not None and cached[1] > now:
            return cached[0]
        tgid = _tgid(tid)
        if tgid is not None:
            if len(self._tgids) >= _TGID_LIMIT:
                self._tgids.clear()
            self._tgids[tid] = (tgid, now + _TGID_TTL)
        return tgid

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


def _syscall(tid: int) -> tuple[int, list[int]] | None:
    """The call thread ``tid`` is blocked in and its arguments; None when unknown."""
    try:
        with open(f"/proc/{tid}/syscall", "rb") as handle:
            fields = handle.read().split()
        return int(fields[0]), [int(field, 16) for field in fields[1:7]]
    except (OSError, ValueError, IndexError):
        return None


def _open_flags(tid: int) -> int | None:
    """The flags of the open call thread ``tid`` waits in; None when unknown."""
    call = _syscall(tid)
    if call is None:
        return None
    number, args = call
    if number in _CREAT_CALLS:
        return os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    index = _OPEN_CALLS.get(number)
    if index is None or len(args) <= index:
        return None
    return args[index]


def _access_intent(tid: int, info: os.stat_result) -> Intent:
    """Whether thread ``tid``'s pending access to the file ``info`` reads or writes it."""
    call = _syscall(tid)
    if call is None:
        return Intent.WRITE
    number, args = call
    if number in _READ_CALLS:
        return Intent.READ
    if number == _MMAP_CALL and len(args) >= 4:
        shared_write = args[2] & mmap.PROT_WRITE and args[3] & mmap.MAP_SHARED
        return Intent.WRITE if shared_write else Intent.READ
    out = _TRANSFER_CALLS.get(number)
    if out is not None and len(args) > out:
        try:
            target = os.stat(f"/proc/{tid}/fd/{args[out]}")
        except OSError:
            return Intent.WRITE
        same = (target.st_dev, target.st_ino) == (info.st_dev, info.st_ino)
        return Intent.WRITE if same else Intent.READ
    return Intent.WRITE
